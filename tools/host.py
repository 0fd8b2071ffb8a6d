"""ToolHost: serves each registered tool on ``<prefix>.tool.<name>`` as a NATS micro service.

A call runs only under a valid grant: signed by a trusted issuer, unexpired, naming this tool,
this workflow and this task, with call budget left. Every refusal is answered with a stable error
code, recorded as an audit event on ``<prefix>.event.<workflow>`` and copied to
``<prefix>.dlq.tool``; the host keeps serving.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from dataclasses import dataclass, field
from types import TracebackType

import structlog
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError

from switchyard.protocol import codec, grants
from switchyard.protocol.errors import (
    BudgetExhaustedError,
    ErrorCode,
    GrantError,
    ProtocolError,
    ToolError,
)
from switchyard.protocol.headers import dead_letter_headers
from switchyard.protocol.messages import ErrorInfo, Event, ToolCall, ToolResult
from switchyard.protocol.streams import ensure_streams
from switchyard.protocol.subjects import Subjects, safe_token
from switchyard.tools.contract import Tool, validation_message
from switchyard.tools.registry import ToolRegistry

log = structlog.get_logger("switchyard.toolhost")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ToolHostConfig:
    subjects: Subjects = field(default_factory=Subjects)
    name: str = "toolhost"
    version: str = "0.1.0"
    trusted_keys: frozenset[str] = frozenset()
    call_timeout: float = 10.0
    max_bytes: int = codec.DEFAULT_MAX_BYTES


class ToolHost:
    def __init__(
        self,
        nc: Client,
        registry: ToolRegistry,
        config: ToolHostConfig | None = None,
        *,
        metrics: CollectorRegistry | None = None,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.registry = registry
        self.config = config or ToolHostConfig()
        self._state = _State.NEW
        self._service: Service | None = None
        self._used: dict[str, tuple[int, float]] = {}  # grant id -> (calls, expires_at)
        self._inflight: set[asyncio.Task[None]] = set()
        reg = metrics or CollectorRegistry()
        self._calls = Counter(
            "switchyard_toolhost_calls", "Tool calls by outcome", ["tool", "outcome"],
            registry=reg,
        )
        self._latency = Histogram(
            "switchyard_toolhost_call_seconds", "Tool call latency", ["tool"], registry=reg
        )

    async def start(self) -> ToolHost:
        if self._state is not _State.NEW:
            raise RuntimeError(f"tool host already {self._state.value}")
        s = self.config.subjects
        await ensure_streams(self.js, s)  # refusals are dead-lettered and audited on streams
        self._service = await add_service(
            self.nc,
            ServiceConfig(
                name=s.service(self.config.name),
                version=self.config.version,
                description="Switchyard tool host",
                metadata={"kind": "toolhost", "tools": ",".join(self.registry.names())},
                queue_group=s.service(self.config.name),
                stats_handler=lambda ep: {"tools": len(self.registry)},
            ),
        )
        for t in self.registry:
            await self._service.add_endpoint(
                EndpointConfig(
                    name=t.name,
                    subject=s.tool(t.name),
                    handler=self._handler(t),
                    metadata={"risk": t.risk, "side_effects": str(t.side_effects).lower()},
                )
            )
        self._state = _State.RUNNING
        log.info("toolhost.started", tools=self.registry.names())
        return self

    def _handler(self, t: Tool):  # type: ignore[no-untyped-def]
        async def handle(req: Request) -> None:
            await self._serve(t, req)

        return handle

    async def _serve(self, t: Tool, req: Request) -> None:
        started = time.perf_counter()
        workflow_id = ""
        try:
            call = codec.decode(req.data, ToolCall, max_bytes=self.config.max_bytes)
            workflow_id = call.workflow_id
            grant = self._authorize(t, call)
            args = t.args_model.model_validate(call.args)
            async with asyncio.timeout(self.config.call_timeout):
                result = await t.fn(args)
            reply = ToolResult(ok=True, result=result.model_dump(mode="json"))
            called = {"grant": grant.id, "task": call.task_id, "args_digest": _digest(req.data)}
            self._calls.labels(t.name, "ok").inc()
        except (ProtocolError, GrantError) as exc:
            reply = ToolResult(ok=False, error=ErrorInfo(code=exc.code, message=exc.message))
            await self._refuse(t, req, workflow_id, exc.code, exc.message)
        except ValidationError as exc:
            msg = f"arguments do not match {t.args_model.__name__}: {validation_message(exc)}"
            reply = ToolResult(ok=False, error=ErrorInfo(code=ErrorCode.INVALID_INPUT, message=msg))
            await self._refuse(t, req, workflow_id, ErrorCode.INVALID_INPUT, msg)
        except ToolError as exc:
            reply = ToolResult(
                ok=False,
                error=ErrorInfo(code=exc.code, message=exc.message, retryable=exc.retryable),
            )
            self._calls.labels(t.name, "failed").inc()
        except TimeoutError:
            msg = f"tool {t.name} took longer than {self.config.call_timeout:g} s"
            reply = ToolResult(
                ok=False, error=ErrorInfo(code=ErrorCode.TIMEOUT, message=msg, retryable=True)
            )
            self._calls.labels(t.name, "timeout").inc()
        except Exception:
            log.exception("toolhost.tool_crashed", tool=t.name)
            reply = ToolResult(
                ok=False,
                error=ErrorInfo(code=ErrorCode.INTERNAL, message=f"tool {t.name} failed"),
            )
            self._calls.labels(t.name, "crashed").inc()
        self._latency.labels(t.name).observe(time.perf_counter() - started)
        if reply.ok:
            try:  # the call happened: a failed audit publish must not turn it into an error
                await self._audit(workflow_id, "tool.called", t.name, called)
            except Exception:
                log.exception("toolhost.call_not_audited", tool=t.name)
        await req.respond(codec.encode(reply))

    def _authorize(self, t: Tool, call: ToolCall) -> grants.Grant:
        now = time.time()
        if call.tool != t.name:
            raise grants.GrantScopeError("tool", t.name, call.tool)
        grant = grants.verify(call.grant, self.config.trusted_keys, now)
        grants.check_tool(grant, t.name, call.workflow_id, call.task_id)
        grants.check_limits(grant, t.name, call.args)
        used, _ = self._used.get(grant.id, (0, grant.expires_at))
        if used >= grant.budget:
            raise BudgetExhaustedError(grant.id, grant.budget)
        self._used[grant.id] = (used + 1, grant.expires_at)
        if len(self._used) > 10_000:
            self._used = {k: v for k, v in self._used.items() if v[1] > now}
        return grant

    async def _refuse(
        self, t: Tool, req: Request, workflow_id: str, code: str, reason: str
    ) -> None:
        self._calls.labels(t.name, "refused").inc()
        log.warning("toolhost.refused", tool=t.name, code=code, reason=reason)
        s = self.config.subjects
        try:
            await self.js.publish(
                s.dlq("tool"),
                req.data,
                headers=dead_letter_headers(
                    reason=reason, code=code, subject=s.tool(t.name), source=self.config.name
                ),
            )
            await self._audit(
                workflow_id or "unknown", "tool.refused", t.name,
                {"code": code, "reason": reason, "args_digest": _digest(req.data)},
            )
        except Exception:  # the refusal itself still goes back to the caller
            log.exception("toolhost.refusal_not_recorded", tool=t.name, code=code)

    async def _audit(self, workflow_id: str, kind: str, tool: str, data: dict[str, str]) -> None:
        event = Event(
            workflow_id=workflow_id, type=kind, at=time.time(), source=self.config.name,
            data={"tool": tool, **data},
        )
        subject = self.config.subjects.event(safe_token(workflow_id))
        await self.js.publish(subject, codec.encode(event))

    async def stop(self) -> None:
        if self._state is _State.STOPPED:
            return
        self._state = _State.STOPPED
        if self._service is not None:
            await self._service.stop()

    async def __aenter__(self) -> ToolHost:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
