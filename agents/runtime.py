"""Agent: the process that works one role's tasks.

The runtime binds the role's durable JetStream consumer (replicas share it), checks each task's
protocol version and grant, validates its input against the handler's model, runs the handler
with bounded concurrency and in-progress heartbeats, publishes the ``Result`` and only then acks.
Handler outcomes map to acks here and nowhere else:

======================  =====================================================================
handler                 on the bus
======================  =====================================================================
returns                 ``Result(ok)``, then ``ack``
raises ``NeedsHuman``   ``Result(needs_human)``, then ``ack`` (so does a tool call that needs approval)
raises ``Retry``        ``nak(delay * 2**(n-1))`` until ``max_deliver``; then ``Result(error)``
raises ``Reject``       ``Result(error, rejected)``, dead-letter copy, ``term``
bad task                dead-letter copy, audit event, ``term`` (and ``Result(error)`` when the
                        task is genuine but its input does not validate)
anything else           ``Result(error, internal)``; the traceback goes to the log only
======================  =====================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, ServiceConfig
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ValidationError

from switchyard.agents.context import TaskContext
from switchyard.agents.heartbeat import Heartbeat
from switchyard.agents.model import ModelClient
from switchyard.agents.model.catalogue import Catalogue
from switchyard.agents.model.routing import ModelRouter
from switchyard.agents.results import as_dict, check_grant_fits, make_result, unwrap
from switchyard.agents.signals import NeedsHuman, Reject, Retry, Scored, retry_delay
from switchyard.protocol import codec, grants
from switchyard.protocol.bus import tracing
from switchyard.protocol.bus.component import Component, ComponentConfig
from switchyard.protocol.bus.faults import Faults
from switchyard.protocol.bus.tasks import unless_stopped
from switchyard.protocol.errors import (
    ConfigError,
    ErrorCode,
    GrantError,
    ModelError,
    ProtocolError,
    ToolError,
)
from switchyard.protocol.headers import TRACEPARENT
from switchyard.protocol.messages import ErrorInfo, Task
from switchyard.protocol.subjects import Bucket, DeadLetterKind, JournalKind, Stream, check_token
from switchyard.tools.breaker import Breakers
from switchyard.tools.contract import validation_message
from switchyard.tools.trust import resolve_trusted_keys

log = structlog.get_logger("switchyard.agent")

I = TypeVar("I", bound=BaseModel)  # noqa: E741
O = TypeVar("O", bound=BaseModel)  # noqa: E741
_Handler = Callable[[Any, TaskContext], Awaitable[object]]


@dataclass(frozen=True, kw_only=True)
class AgentConfig(ComponentConfig):
    concurrency: int = 8
    ack_wait: float = 30.0
    max_deliver: int = 5
    trusted_keys: frozenset[str] = frozenset()
    trust_wait: float = 30.0
    tool_timeout: float = 10.0
    # the models this process may call (None: none), the default for a step with no policy,
    # and how long a deterministic call's reply is cached (0: not cached)
    catalogue: Catalogue | None = None
    model: str = ""
    model_cache_ttl_s: float = 0.0
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.ack_wait <= 0:
            raise ConfigError(f"ack_wait must be positive, not {self.ack_wait}")
        if self.max_deliver < 1:
            raise ConfigError(f"max_deliver must be at least 1, not {self.max_deliver}")


def consumer_config(role: str, config: AgentConfig) -> ConsumerConfig:
    """The durable consumer every replica of ``role`` shares (docs/protocol.md names the same)."""
    return ConsumerConfig(
        durable_name=role, filter_subject=config.subjects.task(role),
        ack_policy=AckPolicy.EXPLICIT, ack_wait=config.ack_wait, max_deliver=config.max_deliver,
        max_ack_pending=max(1000, config.concurrency * 4),
    )


@dataclass
class _Counters:
    received: int = 0
    ok: int = 0
    needs_human: int = 0
    errors: int = 0
    retried: int = 0
    dead_lettered: int = 0


class Agent(Component):
    """One role's worker. Register the handler with ``@agent.task``, then ``agent.run()``, or
    ``async with agent`` / ``await agent.start(config=..., nc=...)`` in your own program."""

    _kind = "agent"
    _dry, _letters = False, DeadLetterKind.TASK  # a shadow: dry grants, dead letters of its own
    _config: AgentConfig

    def __init__(
        self,
        role: str,
        *,
        version: str = "0.1.0",
        description: str = "",
        model: ModelClient | None = None,
        config: AgentConfig | None = None,
        nc: Client | None = None,
        metrics: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(config or AgentConfig(), nc=nc, metrics=metrics)
        self.role = check_token("role", role)
        self.version = version
        self.description = description or f"Switchyard agent for role {role}"
        self.model = model
        self.models: ModelRouter | None = None  # from the config's catalogue, at start
        self.input_model: type[BaseModel] | None = None
        self.output_model: type[BaseModel] | None = None
        self._handler: _Handler | None = None
        self._startup: list[Callable[[], Awaitable[None]]] = []
        self._trusted: frozenset[str] = frozenset()
        self.counters = _Counters()
        self._tasks_total: Counter | None = None
        self._task_seconds: Histogram | None = None

    @property
    def _name(self) -> str:
        return f"agent:{self.role}"

    # registration ---------------------------------------------------------------------------

    def task(self, fn: Callable[[I, TaskContext], Awaitable[O | Scored[O]]]) -> Callable[
        [I, TaskContext], Awaitable[O | Scored[O]]
    ]:
        """Register the handler: ``async def h(inp: In, ctx: TaskContext) -> Out | Scored[Out]``."""
        if self._handler is not None:
            raise ConfigError(f"agent {self.role!r} already has a handler")
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(f"handler {fn.__name__} must be an async function")
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)
        if not params:
            raise ConfigError(f"handler {fn.__name__} must take its input model first")
        inp = hints.get(params[0])
        out = hints.get("return")
        if get_origin(out) is Scored:
            out = get_args(out)[0]
        for what, model in (("input", inp), ("output", out)):
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise ConfigError(
                    f"handler {fn.__name__}: the {what} annotation must be a pydantic model "
                    f"(or Scored[Model] for the output)"
                )
        self.input_model, self.output_model = inp, out
        self._handler = fn
        return fn

    def on_startup(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Register a coroutine run once at start, before the first task is taken."""
        self._startup.append(fn)
        return fn

    def schemas(self) -> dict[str, dict[str, object]]:
        return {
            "input": self.input_model.model_json_schema() if self.input_model else {},
            "output": self.output_model.model_json_schema() if self.output_model else {},
        }

    # lifecycle ------------------------------------------------------------------------------

    async def start(
        self, nc: Client | None = None, config: AgentConfig | None = None,
        *, metrics: CollectorRegistry | None = None,
    ) -> Agent:
        """Start, on ``nc`` (adopted) or a connection of its own; ``config`` and ``metrics``
        replace what the constructor was given."""
        if self._handler is None:
            raise ConfigError(f"agent {self.role!r} has no handler; decorate one with @agent.task")
        if self.state.value == "new":
            if config is not None:
                self._config = config
                self.faults = Faults(config.faults)
            self._nc = nc or self._nc
            self._metrics_registry = metrics or self._metrics_registry
        return await super().start()

    async def _setup(self) -> None:
        cfg, reg = self._config, self._metrics_registry
        self._tasks_total = Counter(
            "switchyard_agent_tasks", "Tasks by outcome", ["role", "outcome"], registry=reg)
        self._task_seconds = Histogram(
            "switchyard_agent_task_seconds", "Handler time", ["role"], registry=reg)
        self._trusted = await resolve_trusted_keys(
            self.js, cfg.subjects, cfg.trusted_keys, wait=cfg.trust_wait)
        if cfg.catalogue is not None:
            self.models = ModelRouter(cfg.catalogue, default=cfg.model, role=self.role,
                                      cache_ttl_s=cfg.model_cache_ttl_s, metrics=reg)
            if cfg.model_cache_ttl_s > 0:
                bucket = cfg.subjects.bucket(Bucket.MODEL_CACHE)
                self.models.bind_cache(self.js, bucket, await self.js.key_value(bucket))
        for hook in self._startup:
            await hook()
        stream, consumer = self._consumer()
        await self._ride_out(lambda: self.js.add_consumer(stream, consumer), "tasks consumer")

    def _consumer(self) -> tuple[str, ConsumerConfig]:
        """Where the tasks come from: the role's durable on the work queue."""
        return self._config.subjects.stream(Stream.TASKS), consumer_config(self.role, self._config)

    def _service_config(self) -> ServiceConfig:
        cfg = self._config
        return ServiceConfig(
            name=cfg.subjects.service(f"agent-{self.role}"),
            version=self.version,
            description=self.description,
            metadata={"kind": "agent", "role": self.role, "instance": cfg.instance,
                      "concurrency": str(cfg.concurrency)},
            stats_handler=lambda ep: self._stats(),
        )

    async def _take_work(self) -> None:
        assert self._service is not None
        cfg, schemas = self._config, self.schemas()
        await self._service.add_endpoint(EndpointConfig(
            name="schema", subject=cfg.subjects.agent_schema(self.role),
            handler=self._answer_schema,
            metadata={"role": self.role, "input_schema": json.dumps(schemas["input"]),
                      "output_schema": json.dumps(schemas["output"])}))
        stream, consumer = self._consumer()
        await self._consume(stream, consumer.durable_name or self.role, self._process,
                            cfg.concurrency)

    def _stats(self) -> dict[str, object]:
        c = self.counters
        return {
            "role": self.role,
            "in_flight": self.in_flight,
            "received": c.received,
            "ok": c.ok,
            "needs_human": c.needs_human,
            "errors": c.errors,
            "retried": c.retried,
            "dead_lettered": c.dead_lettered,
            # circuit breakers of the agent's model endpoints, when its model has some
            "breakers": breakers.snapshot() if isinstance(
                breakers := getattr(self.models or self.model, "breakers", None), Breakers) else {},
            "model_cache": {"hits": self.models.cache_counts.hits,
                            "misses": self.models.cache_counts.misses} if self.models else {},
        }

    async def _close(self) -> None:
        if self.models is not None:
            await self.models.aclose()

    async def _answer_schema(self, req: Request) -> None:
        await req.respond(json.dumps({"role": self.role, **self.schemas()}).encode())

    async def serve(
        self, stop: asyncio.Event, config: AgentConfig | None = None,
        *, metrics: CollectorRegistry | None = None,
    ) -> None:
        """Start (unless ``stop`` is set first), run until ``stop`` is set, then stop gracefully."""
        if await unless_stopped(stop, self.start(config=config, metrics=metrics)):
            try:
                await stop.wait()
            finally:
                await self.stop()

    def run(self) -> None:
        """Run in the foreground until SIGINT/SIGTERM, configured from the environment
        (``NATS_URL`` and the rest, through settings) as ``switchyard agent run`` is: an entry
        point, like ``uvicorn.run``. The CLI owns settings and signals, so this hands over to it."""
        from switchyard.cli.processes import run_agent

        run_agent(self)

    # the work loop --------------------------------------------------------------------------

    async def _process(self, msg: Msg) -> None:
        self.counters.received += 1
        try:
            task = codec.decode(msg.data, Task, max_bytes=self._config.max_bytes)
        except ProtocolError as exc:
            await self._dead_letter(msg, exc.code, exc.message, None)
            return
        try:
            grant = grants.verify(task.grant, self._trusted, time.time())
            check_grant_fits(grant, task, self.role, dry=self._dry)
        except GrantError as exc:  # the task's claim to a workflow is not vouched for
            await self._dead_letter(msg, exc.code, exc.message, None, claimed=task.workflow_id)
            return
        assert self.input_model is not None
        try:
            inp = self.input_model.model_validate(task.input)
        except ValidationError as exc:
            reason = f"input does not match {self.input_model.__name__}: {validation_message(exc)}"
            await self._publish_result(
                msg, task, "error", error=ErrorInfo(code=ErrorCode.INVALID_INPUT, message=reason)
            )
            await self._dead_letter(msg, ErrorCode.INVALID_INPUT, reason, task.workflow_id)
            return
        if task.deadline and time.time() >= task.deadline:
            # the supervisor has timed this attempt out (or is about to): running the handler
            # now would only repeat work, and tool calls, for a result nobody waits for
            await self._publish_result(msg, task, "error", error=ErrorInfo(
                code=ErrorCode.TIMEOUT, retryable=True,
                message=f"taken after the task deadline ({task.deadline:.3f}); not run"))
            return
        await self._run_handler(msg, task, inp, msg.metadata.num_delivered or 1)

    async def _run_handler(self, msg: Msg, task: Task, inp: BaseModel, delivered: int) -> None:
        """The handler's run as the span ``invoke_agent <role>``, under the task's
        ``traceparent`` (the supervisor's span that sent it)."""
        if not tracing.active():
            await self._handle(msg, task, inp, delivered)
            return
        with tracing.TRACER.start_as_current_span(
                f"invoke_agent {self.role}", context=tracing.from_headers(msg.headers),
                kind=SpanKind.CONSUMER, attributes={
                    tracing.GEN_AI_OPERATION: "invoke_agent", tracing.GEN_AI_AGENT_NAME: self.role,
                    tracing.MESSAGING_SYSTEM: "nats", tracing.MESSAGING_DESTINATION: msg.subject,
                    tracing.MESSAGING_OPERATION_TYPE: "process",
                    tracing.MESSAGING_CONSUMER_GROUP: self.role,
                    tracing.MESSAGING_MESSAGE_ID: task.id,
                    tracing.WORKFLOW_ID: task.workflow_id}):
            await self._handle(msg, task, inp, delivered)

    async def _handle(self, msg: Msg, task: Task, inp: BaseModel, delivered: int) -> None:
        cfg = self._config
        assert self._handler is not None and self._tasks_total is not None
        assert self._task_seconds is not None
        headers = msg.headers or {}
        ctx = TaskContext(
            task, nc=self.nc, subjects=cfg.subjects, traceparent=headers.get(TRACEPARENT, ""),
            model=self.model, models=self.models, tool_timeout=cfg.tool_timeout, faults=self.faults,
        )
        heartbeat = Heartbeat(msg, self._config.ack_wait / 3)
        started = time.perf_counter()
        timeout = (task.deadline - time.time()) if task.deadline else None
        try:
            async with asyncio.timeout(max(timeout, 0.01) if timeout is not None else None):
                value = await self._handler(inp, ctx)
            output, confidence = unwrap(value, self.output_model)
            await self._publish_result(
                msg, task, "ok", output=output, confidence=confidence, ctx=ctx, started=started
            )
        except NeedsHuman as exc:
            await self._publish_result(
                msg, task, "needs_human", output=as_dict(exc.output), confidence=exc.confidence,
                reason=exc.reason, ctx=ctx, started=started,
            )
        except Retry as exc:
            if delivered < cfg.max_deliver:
                self.counters.retried += 1
                self._tasks_total.labels(self.role, "retried").inc()
                await msg.nak(delay=retry_delay(exc.delay, delivered))
                return
            reason = f"gave up after {delivered} deliveries: {exc.reason or 'retry'}"
            await self._publish_result(
                msg, task, "error", ctx=ctx, started=started,
                error=ErrorInfo(code=ErrorCode.RETRIES_EXHAUSTED, message=reason, retryable=True),
            )
        except Reject as exc:
            await self._publish_result(
                msg, task, "error", ctx=ctx, started=started,
                error=ErrorInfo(code=ErrorCode.REJECTED, message=exc.reason),
            )
            await self._dead_letter(msg, ErrorCode.REJECTED, exc.reason, task.workflow_id)
        except ToolError as exc:
            if exc.code == ErrorCode.APPROVAL_REQUIRED:  # the call waits for a person
                await self._publish_result(
                    msg, task, "needs_human", output={"approval": exc.details}, confidence=0.0,
                    reason=exc.message, ctx=ctx, started=started,
                )
                return
            await self._publish_result(
                msg, task, "error", ctx=ctx, started=started,
                error=ErrorInfo(code=exc.code, message=exc.message, retryable=exc.retryable),
            )
        except ModelError as exc:  # no model of the step answered, or a ceiling refused the call
            await self._publish_result(
                msg, task, "error", ctx=ctx, started=started,
                error=ErrorInfo(code=exc.code, message=exc.message, retryable=exc.retryable),
            )
        except TimeoutError:
            await self._publish_result(
                msg, task, "error", ctx=ctx, started=started,
                error=ErrorInfo(
                    code=ErrorCode.TIMEOUT, retryable=True,
                    message=f"handler did not finish by the task deadline ({task.deadline:.3f})",
                ),
            )
        except ValidationError as exc:
            await self._publish_result(
                msg, task, "error", ctx=ctx, started=started,
                error=ErrorInfo(code=ErrorCode.INVALID_OUTPUT, message=validation_message(exc)),
            )
        except Exception:
            ctx.log.exception("agent.handler_failed")
            await self._publish_result(
                msg, task, "error", ctx=ctx, started=started,
                error=ErrorInfo(code=ErrorCode.INTERNAL, message="the handler raised; see logs"),
            )
        finally:
            heartbeat.cancel()
            self._task_seconds.labels(self.role).observe(time.perf_counter() - started)

    async def _publish_result(
        self,
        msg: Msg,
        task: Task,
        status: str,
        *,
        output: dict[str, Any] | None = None,
        confidence: float = 1.0,
        reason: str = "",
        error: ErrorInfo | None = None,
        ctx: TaskContext | None = None,
        started: float | None = None,
    ) -> None:
        """Publish the Result and wait for the stream's ack; only then ack the task."""
        assert self._tasks_total is not None
        result = make_result(
            task, self.role, status, output, confidence, reason, error,
            self._config.instance, ctx, started,
        )
        headers: dict[str, str] = {}
        parent = tracing.traceparent() or (msg.headers or {}).get(TRACEPARENT, "")
        if parent:
            headers[TRACEPARENT] = parent
        try:
            # on the workflow's journal, after the record the task came from (or after whatever
            # came since: the supervisor's fold decides what a late result means)
            await self.journal.append(
                task.workflow_id, JournalKind.RESULT,
                lambda after, prev: msgspec.structs.replace(result, after=after, prev=prev),
                after=task.after, prev=task.prev, role=self.role, msg_id=f"{task.id}:result",
                headers=headers)
        except Exception:
            log.exception("agent.result_publish_failed", task_id=task.id)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
            return
        outcome = status if status in ("ok", "needs_human") else "errors"
        setattr(self.counters, outcome, getattr(self.counters, outcome) + 1)
        self._tasks_total.labels(self.role, outcome).inc()
        if error is None or error.code not in (ErrorCode.INVALID_INPUT, ErrorCode.REJECTED):
            self.faults.hit("agent.before_ack")
            await msg.ack()

    async def _dead_letter(
        self, msg: Msg, code: str, reason: str, workflow_id: str | None, *, claimed: str = "",
    ) -> None:
        """Dead-letter the task (``workflow_id``: its workflow, when a valid grant vouches for
        it), then ``term`` it; if the copy cannot be stored, keep the task (``nak``)."""
        assert self._tasks_total is not None
        meta = msg.metadata
        self.counters.dead_lettered += 1
        self._tasks_total.labels(self.role, "dead_lettered").inc()
        log.warning("agent.dead_letter", role=self.role, code=code, reason=reason)
        try:
            await self.dead_letters.send(
                self._letters, msg.data, subject=msg.subject, code=code, reason=reason,
                workflow_id=workflow_id, stream_seq=meta.sequence.stream,
                deliveries=meta.num_delivered, claimed=claimed)
        except Exception:
            log.exception("agent.dead_letter_failed")
            await msg.nak(delay=1.0)  # keep it: nothing may be lost
            return
        await msg.term()
