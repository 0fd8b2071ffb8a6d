"""Shadow mode: a new version of an agent works copies of its role's tasks beside the live one,
and what it makes of them is recorded and compared (``switchyard eval shadow``), never used.

``switchyard agent run ROLE --shadow`` (or ``ShadowAgent.of(agent)``) registers the agent in the
``shadows`` bucket, and refreshes it; while it does, the supervisor copies each task of the role
to ``<prefix>.shadow.task.<role>`` under the task's grant marked *dry*. The shadow takes them from
its durable (``shadow-<role>``) and runs its handler as the live agent would, with three
differences that keep it from changing anything:

- its result goes to ``<prefix>.shadow.result.<role>`` as a ``ShadowResult``, never on a journal,
  so no workflow moves on it;
- its tool calls carry the dry grant: the tool host runs tools without effects, answers the
  others with their dry run, holds nothing for approval and spends nothing;
- a copy whose grant is not dry is refused (dead-lettered on ``<prefix>.dlq.shadow``), so a
  shadow never acts under a grant that could act; and a live agent refuses a dry grant.

Under the generated bus authorization the shadow's identity (``shadow-<role>``) may publish
neither journal records nor tasks: the server refuses what the runtime never sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.micro.service import ServiceConfig

from switchyard.agents.context import TaskContext
from switchyard.agents.results import make_result
from switchyard.agents.runtime import Agent
from switchyard.protocol import codec
from switchyard.protocol.bus.provision import open_bucket
from switchyard.protocol.bus.tasks import cancel_and_wait, periodically
from switchyard.protocol.errors import ConfigError
from switchyard.protocol.messages import (
    SHADOW_REFRESH_S,
    SHADOW_STALE_S,
    ErrorInfo,
    ShadowCall,
    ShadowRegistration,
    ShadowResult,
    Task,
)
from switchyard.protocol.subjects import Bucket, DeadLetterKind, Stream, shadow_durable

log = structlog.get_logger("switchyard.agent")


class ShadowAgent(Agent):
    """An agent working copies of its role's tasks, for comparison only."""

    _kind = "shadow"
    _dry, _letters = True, DeadLetterKind.SHADOW

    @classmethod
    def of(cls, agent: Agent) -> ShadowAgent:
        """The same handler, models and start-up hooks as ``agent``, in shadow mode."""
        shadow = cls(agent.role, version=agent.version, description=agent.description,
                     model=agent.model)
        shadow._handler, shadow._startup = agent._handler, list(agent._startup)
        shadow.input_model, shadow.output_model = agent.input_model, agent.output_model
        return shadow

    def __init__(self, role: str, **kw: Any) -> None:
        super().__init__(role, **kw)
        self._registering: asyncio.Task[None] | None = None

    @property
    def _name(self) -> str:
        return f"shadow:{self.role}"

    def _consumer(self) -> tuple[str, ConsumerConfig]:
        cfg = self._config
        return cfg.subjects.stream(Stream.SHADOW), ConsumerConfig(
            durable_name=shadow_durable(self.role), filter_subject=cfg.subjects.shadow_task(self.role),
            ack_policy=AckPolicy.EXPLICIT, ack_wait=cfg.ack_wait, max_deliver=cfg.max_deliver,
            deliver_policy=DeliverPolicy.NEW, max_ack_pending=max(1000, cfg.concurrency * 4))

    def _service_config(self) -> ServiceConfig:
        live = super()._service_config()
        return ServiceConfig(
            name=self._config.subjects.service(f"shadow-{self.role}"), version=self.version,
            description=f"shadow of {self.description}",
            metadata={**(live.metadata or {}), "kind": "shadow"}, stats_handler=live.stats_handler)

    async def _take_work(self) -> None:
        cfg = self._config
        kv = await open_bucket(self.js, cfg.subjects.bucket(Bucket.SHADOWS))

        async def register() -> None:
            reg = ShadowRegistration(role=self.role, version=self.version,
                                     instance=cfg.instance, at=time.time())
            await kv.put(self.role, msgspec.json.encode(reg))

        # one shadow version per role at a time
        with contextlib.suppress(KeyNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
            held = msgspec.json.decode((await kv.get(self.role)).value or b"{}",
                                       type=ShadowRegistration)
            if held.version != self.version and time.time() - held.at < SHADOW_STALE_S:
                raise ConfigError(
                    f"a shadow of role {self.role!r}, version {held.version} ({held.instance}), "
                    f"is running: stop it before starting version {self.version} (replicas of "
                    "one shadow share its copies; two versions would split them)")
        await register()  # before the first copy can be sent
        self._registering = asyncio.create_task(
            periodically(SHADOW_REFRESH_S, register, "shadow.register_failed"))
        stream, consumer = self._consumer()
        await self._consume(stream, consumer.durable_name or "", self._process, cfg.concurrency)

    async def _stop_taking_work(self) -> None:
        await cancel_and_wait(self._registering)
        with contextlib.suppress(Exception):  # gone from the bucket: no more copies
            kv = await open_bucket(self.js, self._config.subjects.bucket(Bucket.SHADOWS))
            await kv.delete(self.role)

    async def _dead_letter(
        self, msg: Msg, code: str, reason: str, workflow_id: str | None, *, claimed: str = "",
    ) -> None:
        """As the runtime's, on ``<prefix>.dlq.shadow`` and attributed to no workflow: a copy
        is no input of the live run, and its chain stays the live run's alone."""
        await super()._dead_letter(msg, code, reason, None, claimed=claimed or workflow_id or "")

    async def _publish_result(
        self, msg: Msg, task: Task, status: str, *, output: dict[str, Any] | None = None,
        confidence: float = 1.0, reason: str = "", error: ErrorInfo | None = None,
        ctx: TaskContext | None = None, started: float | None = None,
    ) -> None:
        """The shadow's record of the task, on its own subject; then ack the copy."""
        result = make_result(task, self.role, status, output, confidence, reason, error,
                             self._config.instance, ctx, started)
        calls = [ShadowCall(tool=c.tool, args=c.args, ok=c.ok, dry=c.dry,
                            needs_approval=c.needs_approval, error=c.error)
                 for c in (ctx.tool_calls if ctx is not None else [])]
        record = ShadowResult(
            task_id=task.id, workflow_id=task.workflow_id, step=task.step, role=self.role,
            attempt=task.attempt, version=self.version, instance=self._config.instance,
            status=result.status, output=result.output, confidence=result.confidence,
            reason=result.reason, error=result.error, calls=calls,
            duration_ms=result.duration_ms, usage=result.usage, model=result.model, at=time.time())
        try:
            await self.publisher.publish(
                self._config.subjects.shadow_result(self.role), codec.encode(record),
                headers={"Nats-Msg-Id": f"{task.id}:shadow"})
        except Exception:
            log.exception("shadow.result_publish_failed", task_id=task.id)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
            return
        counted = status if status in ("ok", "needs_human") else "errors"
        setattr(self.counters, counted, getattr(self.counters, counted) + 1)
        await msg.ack()
