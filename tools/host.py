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
from functools import lru_cache
from types import TracebackType
from typing import Any

import jmespath
import structlog
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ValidationError

from switchyard.protocol import codec, grants
from switchyard.protocol.audit import AuditLog
from switchyard.protocol.errors import (
    BudgetExhaustedError,
    ErrorCode,
    GrantError,
    ProtocolError,
    ToolError,
)
from switchyard.protocol.headers import dead_letter_headers
from switchyard.protocol.messages import Entry, ErrorInfo, ToolCall, ToolResult
from switchyard.protocol.streams import ensure_streams, open_bucket
from switchyard.protocol.subjects import Subjects
from switchyard.tools.breaker import Breakers
from switchyard.tools.contract import CallContext, Tool, validation_message
from switchyard.tools.ledger import ToolLedger
from switchyard.tools.registry import ToolRegistry

log = structlog.get_logger("switchyard.toolhost")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ToolHostConfig:
    subjects: Subjects = field(default_factory=Subjects)
    retention_s: float = 7 * 24 * 3600.0  # how long the ledger keeps a recorded call
    breaker_failures: int = 5  # a tool failing this many times in a row is cut off...
    breaker_reset_s: float = 30.0  # ...for this long, then one trial call goes through
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
        self.audit = AuditLog(self.js, self.config.subjects, self.config.name)
        self.breakers = Breakers(fail_max=self.config.breaker_failures,
                                 reset_timeout=self.config.breaker_reset_s)
        self._state = _State.NEW
        self._service: Service | None = None
        self._ledger: ToolLedger | None = None
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
        bucket = s.bucket("tool_ledger")
        self._ledger = ToolLedger(await open_bucket(self.js, bucket), self.js, bucket,
                                  retention_s=self.config.retention_s)
        self._service = await add_service(
            self.nc,
            ServiceConfig(
                name=s.service(self.config.name),
                version=self.config.version,
                description="Switchyard tool host",
                metadata={"kind": "toolhost", "tools": ",".join(self.registry.names())},
                queue_group=s.service(self.config.name),
                stats_handler=lambda ep: {"tools": len(self.registry),
                                          "breakers": self.breakers.snapshot()},
            ),
        )
        for t in self.registry:
            self.breakers.get(t.name)  # every tool's circuit shows in $SRV.STATS from the start
            await self._service.add_endpoint(
                EndpointConfig(
                    name=t.name,
                    subject=s.tool_endpoint(t.name),
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
            grant = self._authorize(t, call, req.subject.rsplit(".", 1)[1])
            args = t.args_model.model_validate(call.args)
        except (ProtocolError, GrantError) as exc:
            await self._refuse(t, req, workflow_id, exc.code, exc.message)
            await req.respond(codec.encode(_failure(exc.code, exc.message)))
            return
        except ValidationError as exc:
            msg = f"arguments do not match {t.args_model.__name__}: {validation_message(exc)}"
            await self._refuse(t, req, workflow_id, ErrorCode.INVALID_INPUT, msg)
            await req.respond(codec.encode(_failure(ErrorCode.INVALID_INPUT, msg)))
            return
        digest = grants.call_digest(t.name, call.args)
        approver = grant.approved.get(digest, "")
        if not approver and self._needs_approval(t.name, grant, call.args):
            declined = digest in grant.declined
            code = ErrorCode.APPROVAL_REJECTED if declined else ErrorCode.APPROVAL_REQUIRED
            msg = (f"a person rejected this {t.name} call" if declined else
                   f"this {t.name} call needs a person's approval "
                   f"(policy: {grant.approvals[t.name]})")
            self._calls.labels(t.name, code.value).inc()
            await self._audit(workflow_id, f"tool.{code.value}", t.name,
                              {"grant": grant.id, "task": call.task_id, "call_digest": digest})
            await req.respond(codec.encode(_failure(code, msg)))
            return
        reply, outcome = await self._run(t, call, grant, args)
        if approver and reply.ok:
            reply.approved_by = approver
        self._calls.labels(t.name, outcome).inc()
        self._latency.labels(t.name).observe(time.perf_counter() - started)
        if outcome == "refused" and reply.error is not None:
            await self._refuse(t, req, workflow_id, reply.error.code, reply.error.message)
        elif outcome in ("ok", "replayed"):
            try:  # the call happened: a failed audit publish must not turn it into an error
                facts = {"grant": grant.id, "task": call.task_id, "call_digest": digest}
                if approver:
                    facts["approved_by"] = approver
                await self._audit(workflow_id, f"tool.{'called' if outcome == 'ok' else outcome}",
                                  t.name, facts)
            except Exception:
                log.exception("toolhost.call_not_audited", tool=t.name)
        await req.respond(codec.encode(reply))

    async def _run(
        self, t: Tool, call: ToolCall, grant: grants.Grant, args: BaseModel
    ) -> tuple[ToolResult, str]:
        """Run the call at most once per idempotency key; returns the reply and its outcome."""
        key = call.idempotency_key if t.side_effects else ""
        claimed_at = time.time()
        assert self._ledger is not None
        if key:
            entry = await self._ledger.begin(t.name, key)
            if entry is not None and entry.state == "done" and entry.result is not None:
                return entry.result, "replayed"
            if entry is not None and not t.idempotent:
                return _failure(
                    ErrorCode.OUTCOME_UNKNOWN,
                    f"an earlier {t.name} call with key {key} began at {entry.started_at:.3f} and "
                    "its outcome was never recorded; a person must settle it",
                ), "refused"
            if entry is not None:
                claimed_at = entry.started_at  # idempotent: safe to run again under the same key
        if not await self._ledger.spend(grant.id, grant.budget):
            exc = BudgetExhaustedError(grant.id, grant.budget)
            if key:
                await self._release(t.name, key)
            return _failure(exc.code, exc.message), "refused"
        ctx = CallContext(tool=t.name, workflow_id=call.workflow_id, task_id=call.task_id,
                          idempotency_key=call.idempotency_key)
        limit = t.timeout_s or self.config.call_timeout
        try:
            with self.breakers.guard(t.name, f"tool {t.name}"):
                async with asyncio.timeout(limit):
                    result = await t.call(args, ctx)
            reply, outcome = ToolResult(ok=True, result=result.model_dump(mode="json")), "ok"
        except ToolError as exc:
            reply = _failure(exc.code, exc.message, retryable=exc.retryable)
            if exc.retryable and key:  # no effect happened: let a retry run
                await self._release(t.name, key)
                return reply, "failed"
            outcome = "failed"
        except TimeoutError:  # the effect may or may not have happened: the claim stays open
            msg = f"tool {t.name} took longer than {limit:g} s"
            return _failure(ErrorCode.TIMEOUT, msg, retryable=True), "timeout"
        except Exception:
            log.exception("toolhost.tool_crashed", tool=t.name)
            return _failure(ErrorCode.INTERNAL, f"tool {t.name} failed"), "crashed"
        if key:
            await self._ledger.finish(t.name, key, reply, claimed_at)
        return reply, outcome

    @staticmethod
    def _needs_approval(tool: str, grant: grants.Grant, args: dict[str, Any]) -> bool:
        rule = grant.approvals.get(tool)
        if not rule:
            return False
        return _compiled(rule).search({"args": args}) not in (None, False, "", [], {})

    async def _release(self, tool: str, key: str) -> None:
        assert self._ledger is not None
        await self._ledger.release(tool, key)

    def _authorize(self, t: Tool, call: ToolCall, caller: str) -> grants.Grant:
        """``caller`` is the role token of the subject the call came on: under the generated bus
        config only that role's identity may publish there."""
        if call.tool != t.name:
            raise grants.GrantScopeError("tool", t.name, call.tool)
        grant = grants.verify(call.grant, self.config.trusted_keys, time.time())
        if grant.role != caller:  # a grant lent to, or stolen by, another role
            raise grants.GrantScopeError("role", grant.role, caller)
        grants.check_tool(grant, t.name, call.workflow_id, call.task_id)
        grants.check_limits(grant, t.name, call.args)
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
                    reason=reason, code=code, subject=req.subject, source=self.config.name
                ),
            )
            await self._audit(
                workflow_id or "unknown", "tool.refused", t.name,
                {"code": code, "reason": reason, "args_digest": _digest(req.data)},
            )
        except Exception:  # the refusal itself still goes back to the caller
            log.exception("toolhost.refusal_not_recorded", tool=t.name, code=code)

    async def _audit(self, workflow_id: str, kind: str, tool: str, data: dict[str, str]) -> None:
        await self.audit.append(workflow_id, [Entry(type=kind, data={"tool": tool, **data})])

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


@lru_cache(maxsize=256)
def _compiled(expression: str) -> Any:
    return jmespath.compile(expression)


def _failure(code: str, message: str, *, retryable: bool = False) -> ToolResult:
    return ToolResult(ok=False, error=ErrorInfo(code=code, message=message, retryable=retryable))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
