"""ToolHost: serves each registered tool on ``<prefix>.tool.<name>`` as a NATS micro service.

A call runs only under a valid grant: signed by a trusted issuer, unexpired, naming this tool,
this workflow and this task, with call budget left. Every refusal is answered with a stable error
code, recorded as an audit event on ``<prefix>.event.<workflow>`` and copied to
``<prefix>.dlq.tool``; the host keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.client import Client
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, ServiceConfig
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ValidationError

from switchyard.protocol import codec, grants
from switchyard.protocol.bus import tracing
from switchyard.protocol.bus.component import Component, ComponentConfig
from switchyard.protocol.bus.provision import open_bucket
from switchyard.protocol.bus.transient import transient
from switchyard.protocol.errors import (
    BudgetExhaustedError,
    ErrorCode,
    GrantError,
    GrantScopeError,
    ProtocolError,
    ToolError,
)
from switchyard.protocol.events import EventType
from switchyard.protocol.messages import Entry, ErrorInfo, ToolCall, ToolResult
from switchyard.protocol.subjects import Bucket, DeadLetterKind
from switchyard.tools.breaker import Breakers
from switchyard.tools.contract import CallContext, Tool, validation_message
from switchyard.tools.ledger import ToolLedger
from switchyard.tools.registry import ToolRegistry
from switchyard.tools.trust import resolve_trusted_keys

log = structlog.get_logger("switchyard.toolhost")


@dataclass(frozen=True, kw_only=True)
class ToolHostConfig(ComponentConfig):
    retention_s: float = 7 * 24 * 3600.0  # how long the ledger keeps a recorded call
    breaker_failures: int = 5  # a tool failing this many times in a row is cut off...
    breaker_reset_s: float = 30.0  # ...for this long, then one trial call goes through
    name: str = "toolhost"
    version: str = "0.1.0"
    trusted_keys: frozenset[str] = frozenset()  # none: the supervisor's key, from the bus
    trust_wait: float = 30.0
    call_timeout: float = 10.0
    concurrency: int = 64  # calls served at once
    # how long a ledger read or write rides out its bucket having no leader (a cluster node was
    # lost) before the call is answered "unavailable, retry"; below callers' tool timeout (10 s)
    ledger_wait_s: float = 8.0


class ToolHost(Component):
    """Serves a registry's tools. Calls run concurrently, each in a task the lifecycle waits for
    on ``stop()``: endpoints stop first, calls in flight finish (up to the graceful timeout)."""

    _kind = "toolhost"
    _config: ToolHostConfig

    def __init__(
        self,
        registry: ToolRegistry,
        config: ToolHostConfig | None = None,
        *,
        nc: Client | None = None,
        metrics: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(config or ToolHostConfig(), nc=nc, metrics=metrics)
        self.registry = registry
        self.config = self._config
        self.breakers = Breakers(fail_max=self.config.breaker_failures,
                                 reset_timeout=self.config.breaker_reset_s,
                                 metrics=self._metrics_registry)
        self._ledger: ToolLedger | None = None
        self._trusted: frozenset[str] = frozenset()
        self._slots = asyncio.Semaphore(self.config.concurrency)
        self._calls = Counter(
            "switchyard_toolhost_calls", "Tool calls by outcome", ["tool", "outcome"],
            registry=self._metrics_registry,
        )
        self._latency = Histogram(
            "switchyard_toolhost_call_seconds", "Tool call latency", ["tool"],
            registry=self._metrics_registry,
        )

    @property
    def _name(self) -> str:
        return self.config.name

    async def _setup(self) -> None:
        self._trusted = await resolve_trusted_keys(
            self.js, self.config.subjects, self.config.trusted_keys, wait=self.config.trust_wait)
        bucket = self.config.subjects.bucket(Bucket.TOOL_LEDGER)
        kv = await self._ride_out(lambda: open_bucket(self.js, bucket), bucket)
        self._ledger = ToolLedger(kv, self.js, bucket, retention_s=self.config.retention_s,
                                  wait=self.config.ledger_wait_s)

    def _service_config(self) -> ServiceConfig:
        s = self.config.subjects
        return ServiceConfig(
            name=s.service(self.config.name),
            version=self.config.version,
            description="Switchyard tool host",
            metadata={"kind": "toolhost", "tools": ",".join(self.registry.names())},
            queue_group=s.service(self.config.name),
            stats_handler=lambda ep: {"tools": len(self.registry), "in_flight": self.in_flight,
                                      "breakers": self.breakers.snapshot()},
        )

    async def _take_work(self) -> None:
        assert self._service is not None
        for t in self.registry:
            self.breakers.get(t.name)  # every tool's circuit shows in $SRV.STATS from the start
            await self._service.add_endpoint(
                EndpointConfig(
                    name=t.name,
                    subject=self.config.subjects.tool_endpoint(t.name),
                    handler=self._handler(t),
                    metadata={"risk": t.risk, "side_effects": str(t.side_effects).lower(),
                              # what the console checks a person's edit of a held call against
                              "args_schema": json.dumps(t.args_model.model_json_schema())},
                )
            )
        log.info("toolhost.tools", tools=self.registry.names())

    async def _stop_taking_work(self) -> None:
        if self._service is not None:
            await self._service.stop()  # no new calls; those in flight are waited for

    def _handler(self, t: Tool) -> Callable[[Request], Awaitable[None]]:
        async def handle(req: Request) -> None:
            # micro runs one handler at a time per endpoint: calls run in tasks of their own,
            # at most ``concurrency`` at once, and stop() waits for them
            await self._slots.acquire()
            self._spawn(self._serve_in_slot(t, req))

        return handle

    async def _serve_in_slot(self, t: Tool, req: Request) -> None:
        try:
            with tracing.TRACER.start_as_current_span(
                    f"execute_tool {t.name}", context=tracing.from_headers(req.headers),
                    kind=SpanKind.SERVER, attributes={
                        tracing.GEN_AI_OPERATION: "execute_tool",
                        tracing.GEN_AI_TOOL_NAME: t.name, tracing.MESSAGING_SYSTEM: "nats",
                        tracing.MESSAGING_DESTINATION: req.subject,
                        tracing.MESSAGING_OPERATION_TYPE: "process"}):
                await self._serve(t, req)
        except Exception as exc:  # a bug: logged with its traceback, answered with a stable code
            log.exception("toolhost.call_failed", tool=t.name)
            with contextlib.suppress(Exception):  # the bus failing is worth a retry, a bug not
                await req.respond(codec.encode(_failure(
                    ErrorCode.INTERNAL, f"tool host failed serving {t.name}",
                    retryable=transient(exc))))
        finally:
            self._slots.release()

    async def _serve(self, t: Tool, req: Request) -> None:
        started = time.perf_counter()
        workflow_id: str | None = None  # known once a valid grant names it
        call: ToolCall | None = None
        try:
            call = codec.decode(req.data, ToolCall, max_bytes=self.config.max_bytes)
            grant = grants.verify(call.grant, self._trusted, time.time())
            # signed by a trusted key: the workflow is known; a shadow's (dry) call is none of
            # its inputs, so what is refused of one goes on the unattributed chain
            workflow_id = None if grant.dry else grant.workflow_id
            self._authorize(t, call, grant, req.subject.rsplit(".", 1)[1])
            args = t.args_model.model_validate(call.args)
        except (ProtocolError, GrantError) as exc:
            await self._refuse(t, req, workflow_id, exc.code, exc.message,
                               claimed=call.workflow_id if call is not None else "")
            await req.respond(codec.encode(_failure(exc.code, exc.message)))
            return
        except ValidationError as exc:
            msg = f"arguments do not match {t.args_model.__name__}: {validation_message(exc)}"
            await self._refuse(t, req, workflow_id, ErrorCode.INVALID_INPUT, msg)
            await req.respond(codec.encode(_failure(ErrorCode.INVALID_INPUT, msg)))
            return
        if grant.dry:  # a shadow agent's call: nothing happens, nothing is held or recorded
            reply = await self._run_dry(t, call, grant, args)
            self._calls.labels(t.name, "dry" if reply.ok else "dry_failed").inc()
            await req.respond(codec.encode(reply))
            return
        digest = grants.call_digest(t.name, call.args)
        approver = grant.approved.get(digest, "")
        if not approver and grants.needs_approval(grant, t.name, call.args):
            declined = digest in grant.declined
            code = ErrorCode.APPROVAL_REJECTED if declined else ErrorCode.APPROVAL_REQUIRED
            msg = (f"a person rejected this {t.name} call" if declined else
                   f"this {t.name} call needs a person's approval "
                   f"(policy: {grant.approvals[t.name]})")
            self._calls.labels(t.name, code.value).inc()
            await self._record(workflow_id, EventType(f"tool.{code.value}"), t.name,
                               {"grant": grant.id, "task": call.task_id, "call_digest": digest})
            await req.respond(codec.encode(_failure(code, msg)))
            return
        reply, outcome = await self._run(t, call, grant, args)
        if approver and reply.ok:
            reply.approved_by = approver
        self._calls.labels(t.name, outcome).inc()
        self._latency.labels(t.name).observe(time.perf_counter() - started)
        if outcome == "refused" and reply.error is not None:
            await self._refuse(t, req, workflow_id, reply.error.code, reply.error.message,
                               call.task_id)
        elif outcome in ("ok", "replayed"):
            try:  # the call happened: a failed audit publish must not turn it into an error
                # the arguments too: what was done, exactly (``switchyard eval`` checks them
                # against the policy's approval rules)
                facts: dict[str, Any] = {"grant": grant.id, "task": call.task_id,
                                         "call_digest": digest, "args": call.args}
                if approver:
                    facts["approved_by"] = approver
                kind = EventType.TOOL_CALLED if outcome == "ok" else EventType.TOOL_REPLAYED
                await self._record(workflow_id, kind, t.name, facts)
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
        try:
            entry = await self._ledger.begin(t.name, key) if key else None
        except Exception as failed:  # nothing ran: the caller may safely try again
            if not transient(failed):
                raise
            return _unavailable(t.name, failed), "unavailable"
        if key:
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
        try:
            spent = await self._ledger.spend(grant.id, grant.budget)
        except Exception as failed:
            if not transient(failed):
                raise
            if key:
                try:
                    await self._release(t.name, key)
                except Exception:  # the claim stays: a repeat is refused as outcome_unknown
                    log.exception("toolhost.claim_not_released", tool=t.name)
            return _unavailable(t.name, failed), "unavailable"
        if not spent:
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
            try:
                await self._ledger.finish(t.name, key, reply, claimed_at)
            except Exception as failed:  # it ran: the caller gets its result; a repeat of the
                if not transient(failed):  # key finds it begun, unrecorded (outcome_unknown)
                    raise
                log.error("toolhost.call_not_recorded", tool=t.name,
                          error=type(failed).__name__)
        return reply, outcome

    async def _run_dry(
        self, t: Tool, call: ToolCall, grant: grants.Grant, args: BaseModel
    ) -> ToolResult:
        """A call under a dry grant: a tool without effects runs; one with effects answers with
        its dry run, or is refused if it has none. No ledger, no budget, no approval hold, no
        audit record: none of it happened."""
        if t.has_effects and t.dry is None:
            return _failure(ErrorCode.DRY_RUN_UNSUPPORTED,
                            f"tool {t.name} has effects and no dry run; a shadow agent cannot call it")
        ctx = CallContext(tool=t.name, workflow_id=call.workflow_id, task_id=call.task_id,
                          idempotency_key=call.idempotency_key)
        try:
            async with asyncio.timeout(t.timeout_s or self.config.call_timeout):
                result = await t.call_dry(args, ctx)
        except ToolError as exc:
            return _failure(exc.code, exc.message, retryable=exc.retryable)
        except TimeoutError:
            return _failure(ErrorCode.TIMEOUT, f"tool {t.name}'s dry run took too long", retryable=True)
        except Exception:
            log.exception("toolhost.dry_run_crashed", tool=t.name)
            return _failure(ErrorCode.INTERNAL, f"tool {t.name}'s dry run failed")
        digest = grants.call_digest(t.name, call.args)
        held = grants.needs_approval(grant, t.name, call.args) and digest not in grant.approved
        return ToolResult(ok=True, result=result.model_dump(mode="json"), dry=True,
                          needs_approval=held)

    async def _release(self, tool: str, key: str) -> None:
        assert self._ledger is not None
        await self._ledger.release(tool, key)

    def _authorize(self, t: Tool, call: ToolCall, grant: grants.Grant, caller: str) -> None:
        """``caller`` is the role token of the subject the call came on: under the generated bus
        config only that role's identity may publish there."""
        if call.tool != t.name:
            raise GrantScopeError("tool", t.name, call.tool)
        if grant.role != caller:  # a grant lent to, or stolen by, another role
            raise GrantScopeError("role", grant.role, caller)
        grants.check_tool(grant, t.name, call.workflow_id, call.task_id)
        grants.check_limits(grant, t.name, call.args)

    async def _refuse(
        self, t: Tool, req: Request, workflow_id: str | None, code: str, reason: str,
        task_id: str = "", *, claimed: str = "",
    ) -> None:
        """Dead-letter a refused call and audit it (on its workflow's chain when a valid grant
        names the workflow, else on the unattributed chain); the caller still gets its answer."""
        self._calls.labels(t.name, "refused").inc()
        log.warning("toolhost.refused", tool=t.name, code=code, reason=reason)
        try:
            await self.dead_letters.send(
                DeadLetterKind.TOOL, req.data, subject=req.subject, code=code, reason=reason,
                workflow_id=workflow_id, event=EventType.TOOL_REFUSED, claimed=claimed,
                facts={"tool": t.name, "task": task_id, "args_digest": _digest(req.data)})
        except Exception:  # the refusal itself still goes back to the caller
            log.exception("toolhost.refusal_not_recorded", tool=t.name, code=code)

    async def _record(
        self, workflow_id: str | None, kind: EventType, tool: str, data: dict[str, Any],
    ) -> None:
        await self.audit.append(workflow_id, [Entry(type=kind, data={"tool": tool, **data})])


def _unavailable(tool: str, exc: Exception) -> ToolResult:
    return _failure(ErrorCode.INTERNAL, f"the tool ledger did not answer ({type(exc).__name__}: "
                    f"a cluster electing a leader?); {tool} did not run, try again",
                    retryable=True)


def _failure(code: str, message: str, *, retryable: bool = False) -> ToolResult:
    return ToolResult(ok=False, error=ErrorInfo(code=code, message=message, retryable=retryable))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
