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
import enum
import inspect
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import nats
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ValidationError
from tenacity import RetryCallState, wait_exponential_jitter

from switchyard.agents.context import TaskContext
from switchyard.agents.model import ModelClient
from switchyard.agents.signals import NeedsHuman, Reject, Retry, Scored
from switchyard.protocol import codec, faults, grants
from switchyard.protocol.audit import AuditLog
from switchyard.protocol.errors import (
    ConfigError,
    ErrorCode,
    GrantError,
    GrantScopeError,
    ProtocolError,
    ToolError,
)
from switchyard.protocol.headers import MSG_ID, PROTOCOL, TRACEPARENT, dead_letter_headers
from switchyard.protocol.messages import PROTOCOL_VERSION, Entry, ErrorInfo, Result, Task
from switchyard.protocol.publish import Publisher
from switchyard.protocol.pull import PullConsumer
from switchyard.protocol.streams import ensure_streams
from switchyard.protocol.subjects import Subjects, check_token
from switchyard.tools.breaker import Breakers
from switchyard.tools.contract import validation_message
from switchyard.tools.trust import resolve_trusted_keys

log = structlog.get_logger("switchyard.agent")

I = TypeVar("I", bound=BaseModel)  # noqa: E741
O = TypeVar("O", bound=BaseModel)  # noqa: E741
Handler = Callable[[Any, TaskContext], Awaitable[Any]]
MAX_RETRY_DELAY = 300.0  # a Retry's delay doubles with each delivery, up to this


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class AgentConfig:
    nats_url: str = "nats://127.0.0.1:4222"
    subjects: Subjects = field(default_factory=Subjects)
    concurrency: int = 8
    ack_wait: float = 30.0
    max_deliver: int = 5
    graceful_timeout: float = 10.0
    trusted_keys: frozenset[str] = frozenset()
    trust_wait: float = 30.0
    max_bytes: int = codec.DEFAULT_MAX_BYTES
    tool_timeout: float = 10.0
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # extra ``nats.connect`` options: credentials and inbox prefix under a secured bus
    connect_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.ack_wait <= 0:
            raise ConfigError(f"ack_wait must be positive, not {self.ack_wait}")


@dataclass
class _Counters:
    received: int = 0
    ok: int = 0
    needs_human: int = 0
    errors: int = 0
    retried: int = 0
    dead_lettered: int = 0


class Agent:
    """One role's worker. Register the handler with ``@agent.task``, then ``run()`` or
    ``async with agent.started(nc)``."""

    def __init__(
        self,
        role: str,
        *,
        version: str = "0.1.0",
        description: str = "",
        model: ModelClient | None = None,
    ) -> None:
        self.role = check_token("role", role)
        self.version = version
        self.description = description or f"Switchyard agent for role {role}"
        self.model = model
        self.input_model: type[BaseModel] | None = None
        self.output_model: type[BaseModel] | None = None
        self._handler: Handler | None = None
        self._startup: list[Callable[[], Awaitable[None]]] = []
        self._state = _State.NEW
        self._config = AgentConfig()
        self._nc: Client | None = None
        self._own_nc = False
        self._js: JetStreamContext | None = None
        self._audit: AuditLog | None = None
        self._service: Service | None = None
        self._consumer: PullConsumer | None = None
        self._publisher: Publisher | None = None
        self._trusted: frozenset[str] = frozenset()
        self.counters = _Counters()
        self._metrics: tuple[Counter, Histogram] | None = None

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

    def schemas(self) -> dict[str, Any]:
        return {
            "input": self.input_model.model_json_schema() if self.input_model else {},
            "output": self.output_model.model_json_schema() if self.output_model else {},
        }

    # lifecycle ------------------------------------------------------------------------------

    async def start(
        self,
        nc: Client | None = None,
        config: AgentConfig | None = None,
        *,
        metrics: CollectorRegistry | None = None,
    ) -> Agent:
        if self._state is not _State.NEW:
            raise RuntimeError(f"agent {self.role!r} already {self._state.value}")
        if self._handler is None:
            raise ConfigError(f"agent {self.role!r} has no handler; decorate one with @agent.task")
        self._state = _State.RUNNING
        self._config = cfg = config or AgentConfig()
        reg = metrics or CollectorRegistry()
        self._metrics = (
            Counter("switchyard_agent_tasks", "Tasks by outcome", ["role", "outcome"], registry=reg),
            Histogram("switchyard_agent_task_seconds", "Handler time", ["role"], registry=reg),
        )
        if nc is None:
            nc = await nats.connect(cfg.nats_url, name=f"sy-agent-{self.role}",
                                    **cfg.connect_options)
            self._own_nc = True
        self._nc = nc
        self._js = js = nc.jetstream()
        s = cfg.subjects
        await ensure_streams(js, s)
        self._publisher = await Publisher(nc).start()
        self._audit = AuditLog(js, s, f"agent:{self.role}", cache_size=256,
                               publisher=self._publisher)
        self._trusted = await resolve_trusted_keys(
            js, s, cfg.trusted_keys, wait=cfg.trust_wait
        )
        for hook in self._startup:
            await hook()
        await js.add_consumer(s.stream("tasks"), ConsumerConfig(
            durable_name=self.role, filter_subject=s.task(self.role),
            ack_policy=AckPolicy.EXPLICIT, ack_wait=cfg.ack_wait, max_deliver=cfg.max_deliver,
            max_ack_pending=max(1000, cfg.concurrency * 4),
        ))
        self._service = await add_service(
            nc,
            ServiceConfig(
                name=s.service(f"agent-{self.role}"),
                version=self.version,
                description=self.description,
                metadata={
                    "kind": "agent",
                    "role": self.role,
                    "instance": cfg.instance,
                    "concurrency": str(cfg.concurrency),
                },
                stats_handler=lambda ep: self._stats(),
            ),
        )
        schemas = self.schemas()
        await self._service.add_endpoint(
            EndpointConfig(
                name="schema",
                subject=f"{s.prefix}.agent.{self.role}.schema",
                handler=self._answer_schema,
                metadata={"role": self.role,
                          "input_schema": json.dumps(schemas["input"]),
                          "output_schema": json.dumps(schemas["output"])},
            )
        )
        self._consumer = await PullConsumer(
            nc, s.stream("tasks"), self.role, self._process, capacity=cfg.concurrency).start()
        log.info("agent.started", role=self.role, instance=cfg.instance)
        return self

    def _stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "role": self.role,
            "in_flight": len(self._consumer.inflight) if self._consumer else 0,
            "received": c.received,
            "ok": c.ok,
            "needs_human": c.needs_human,
            "errors": c.errors,
            "retried": c.retried,
            "dead_lettered": c.dead_lettered,
            # circuit breakers of the agent's model endpoints, when its model has some
            "breakers": breakers.snapshot() if isinstance(
                breakers := getattr(self.model, "breakers", None), Breakers) else {},
        }

    async def _answer_schema(self, req: Request) -> None:
        await req.respond(json.dumps({"role": self.role, **self.schemas()}).encode())

    async def stop(self, *, graceful_timeout: float | None = None) -> None:
        """Stop taking tasks, let in-flight ones finish (bounded), nak the rest, drain."""
        if self._state in (_State.STOPPING, _State.STOPPED, _State.NEW):
            self._state = _State.STOPPED if self._state is _State.NEW else self._state
            return
        self._state = _State.STOPPING
        if self._consumer is not None:
            await self._consumer.stop()
        wait = self._config.graceful_timeout if graceful_timeout is None else graceful_timeout
        inflight = dict(self._consumer.inflight) if self._consumer else {}
        if inflight:
            _, pending = await asyncio.wait(list(inflight), timeout=wait)
            for task in pending:
                msg = inflight.get(task)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                if msg is not None:
                    with contextlib.suppress(Exception):
                        await msg.nak()
        if self._service is not None:
            await self._service.stop()
        if self._publisher is not None:
            await self._publisher.stop()
        if self._own_nc and self._nc is not None:
            await self._nc.drain()
        self._state = _State.STOPPED
        log.info("agent.stopped", role=self.role)

    async def __aenter__(self) -> Agent:
        if self._state is _State.NEW:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve(
        self, stop: asyncio.Event, config: AgentConfig | None = None,
        *, metrics: CollectorRegistry | None = None,
    ) -> None:
        """Start, run until ``stop`` is set, then stop gracefully."""
        await self.start(config=config, metrics=metrics)
        try:
            await stop.wait()
        finally:
            await self.stop()

    def run(self, config: AgentConfig | None = None) -> None:
        """Run in the foreground until SIGINT/SIGTERM (an entry point, like ``uvicorn.run``)."""
        from switchyard.agents._main import run_until_signal

        run_until_signal(lambda stop: self.serve(stop, config))

    # the work loop --------------------------------------------------------------------------

    async def _process(self, msg: Msg) -> None:
        self.counters.received += 1
        try:
            task = codec.decode(msg.data, Task, max_bytes=self._config.max_bytes)
        except ProtocolError as exc:
            await self._dead_letter(msg, exc.code, exc.message, "")
            return
        try:
            grant = grants.verify(task.grant, self._trusted, time.time())
            _check_grant_fits(grant, task, self.role)
        except GrantError as exc:
            await self._dead_letter(msg, exc.code, exc.message, task.workflow_id)
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
        await self._run_handler(msg, task, inp, msg.metadata.num_delivered or 1)

    async def _run_handler(self, msg: Msg, task: Task, inp: BaseModel, delivered: int) -> None:
        cfg = self._config
        assert self._nc is not None and self._handler is not None and self._metrics is not None
        headers = msg.headers or {}
        ctx = TaskContext(
            task, nc=self._nc, subjects=cfg.subjects, traceparent=headers.get(TRACEPARENT, ""),
            model=self.model, tool_timeout=cfg.tool_timeout,
        )
        heartbeat = _Heartbeat(msg, self._config.ack_wait / 3)
        started = time.perf_counter()
        timeout = (task.deadline - time.time()) if task.deadline else None
        try:
            async with asyncio.timeout(max(timeout, 0.01) if timeout is not None else None):
                value = await self._handler(inp, ctx)
            output, confidence = _unwrap(value, self.output_model)
            await self._publish_result(
                msg, task, "ok", output=output, confidence=confidence, ctx=ctx, started=started
            )
        except NeedsHuman as exc:
            output = _as_dict(exc.output)
            await self._publish_result(
                msg, task, "needs_human", output=output, confidence=exc.confidence,
                reason=exc.reason, ctx=ctx, started=started,
            )
        except Retry as exc:
            if delivered < cfg.max_deliver:
                self.counters.retried += 1
                self._metrics[0].labels(self.role, "retried").inc()
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
            self._metrics[1].labels(self.role).observe(time.perf_counter() - started)

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
        assert self._publisher is not None and self._metrics is not None
        result = _make_result(
            task, self.role, status, output, confidence, reason, error,
            self._config.instance, ctx, started,
        )
        headers = {MSG_ID: f"{task.id}:result", PROTOCOL: PROTOCOL_VERSION}
        if msg.headers and TRACEPARENT in msg.headers:
            headers[TRACEPARENT] = msg.headers[TRACEPARENT]
        try:
            await self._publisher.publish(
                self._config.subjects.result(self.role), codec.encode(result), headers
            )
        except Exception:
            log.exception("agent.result_publish_failed", task_id=task.id)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
            return
        outcome = status if status in ("ok", "needs_human") else "errors"
        setattr(self.counters, outcome, getattr(self.counters, outcome) + 1)
        self._metrics[0].labels(self.role, outcome).inc()
        if error is None or error.code not in (ErrorCode.INVALID_INPUT, ErrorCode.REJECTED):
            faults.hit("agent.before_ack")
            await msg.ack()

    async def _dead_letter(self, msg: Msg, code: str, reason: str, workflow_id: str) -> None:
        """Copy the task's bytes to the dead-letter subject, audit it, and ``term`` it."""
        assert self._js is not None and self._metrics is not None and self._audit is not None
        s = self._config.subjects
        meta = msg.metadata
        self.counters.dead_lettered += 1
        self._metrics[0].labels(self.role, "dead_lettered").inc()
        log.warning("agent.dead_letter", role=self.role, code=code, reason=reason)
        try:
            await self._js.publish(
                s.dlq("task"), msg.data,
                headers=dead_letter_headers(
                    reason=reason, code=code, subject=msg.subject, source=f"agent:{self.role}",
                    stream_seq=meta.sequence.stream, deliveries=meta.num_delivered,
                ),
            )
            await self._audit.append(workflow_id or "unknown", [Entry(
                type="task.dead_lettered",
                data={"code": code, "reason": reason, "stream_seq": meta.sequence.stream},
            )], msg_id=f"dlq:task:{meta.sequence.stream}")
        except Exception:
            log.exception("agent.dead_letter_failed")
            await msg.nak(delay=1.0)  # keep it: nothing may be lost
            return
        await msg.term()


class _Heartbeat:
    """Tells the server every ``interval`` that a task is still being worked on, so a long handler
    is not redelivered; a timer, not a task, as most handlers finish well before the first beat."""

    def __init__(self, msg: Msg, interval: float) -> None:
        self._msg, self._interval = msg, interval
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(interval, self._beat)
        self._sending: asyncio.Task[None] | None = None

    def _beat(self) -> None:
        self._sending = self._loop.create_task(self._send())
        self._handle = self._loop.call_later(self._interval, self._beat)

    async def _send(self) -> None:
        with contextlib.suppress(Exception):
            await self._msg.in_progress()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _make_result(
    task: Task,
    role: str,
    status: str,
    output: dict[str, Any] | None,
    confidence: float,
    reason: str,
    error: ErrorInfo | None,
    instance: str,
    ctx: TaskContext | None,
    started: float | None,
) -> Result:
    result = Result(
        task_id=task.id, workflow_id=task.workflow_id, step=task.step, role=role,
        attempt=task.attempt, status=status,  # type: ignore[arg-type]
        output=output, confidence=confidence, reason=reason or (error.message if error else ""),
        error=error, agent=instance,
        duration_ms=(time.perf_counter() - started) * 1000 if started else 0.0,
    )
    if ctx is not None:
        result.usage = ctx.usage
    return result


def _check_grant_fits(grant: grants.Grant, task: Task, role: str) -> None:
    if grant.task_id != task.id:
        raise GrantScopeError("task", grant.task_id, task.id)
    if grant.workflow_id != task.workflow_id:
        raise GrantScopeError("workflow", grant.workflow_id, task.workflow_id)
    if grant.role != role:
        raise GrantScopeError("role", grant.role, role)


def _as_dict(value: BaseModel | dict[str, Any] | None) -> dict[str, Any] | None:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def _unwrap(value: Any, model: type[BaseModel] | None) -> tuple[dict[str, Any], float]:
    confidence = 1.0
    if isinstance(value, Scored):
        value, confidence = value.value, value.confidence
    if model is not None and not isinstance(value, model):
        value = model.model_validate(value)
    return value.model_dump(mode="json"), confidence


def retry_delay(base: float, delivered: int) -> float:
    """Exponential backoff with jitter (tenacity's): about ``base * 2**(n-1)`` plus up to ``base``
    at random, capped at ``MAX_RETRY_DELAY``."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = delivered
    wait = wait_exponential_jitter(multiplier=base, max=MAX_RETRY_DELAY, jitter=base)
    return float(wait(state))
