"""The supervisor process: takes submissions, results and decisions off the bus, runs them through
the engine, stores each transition with compare-and-set, then publishes what it implies.

A message is acked only after its transition is stored and its effects published. A redelivered
message whose transition is already stored re-publishes what the state says is due (the message
ids are deterministic, so JetStream drops duplicates): a crash between the store and the publishes
loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import heapq
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import nats
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig
from prometheus_client import CollectorRegistry, Counter

from switchyard.protocol import codec, faults, grants
from switchyard.protocol.audit import AuditLog
from switchyard.protocol.errors import ConfigError, ErrorCode, ProtocolError
from switchyard.protocol.headers import (
    DLQ_HISTORY,
    MSG_ID,
    PROTOCOL,
    TRACEPARENT,
    dead_letter_headers,
    traceparent_for,
)
from switchyard.protocol.messages import (
    PROTOCOL_VERSION,
    Decision,
    Entry,
    Outcome,
    Result,
    Task,
    WorkflowRequest,
)
from switchyard.protocol.publish import Publisher
from switchyard.protocol.pull import PullConsumer
from switchyard.protocol.streams import (
    TRUST_KEY,
    ensure_streams,
    max_deliveries_subject,
    open_bucket,
)
from switchyard.protocol.subjects import Subjects, check_token, safe_token
from switchyard.supervisor.catalog import WorkflowCatalog
from switchyard.supervisor.engine import (
    TERMINAL,
    CloseEscalation,
    DecisionReceived,
    Effect,
    EngineEvent,
    ResultReceived,
    SendEscalation,
    SendEvent,
    SendOutcome,
    SendTask,
    Submitted,
    TaskDeadLettered,
    TimerFired,
    WorkflowState,
    due,
    transition,
)
from switchyard.supervisor.escalation import EscalationIndex
from switchyard.supervisor.policy import Policy
from switchyard.supervisor.store import RevisionConflict, WorkflowStore
from switchyard.supervisor.workflow import Workflow

log = structlog.get_logger("switchyard.supervisor")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class SupervisorConfig:
    seed: bytes
    workflows: dict[str, Workflow]
    nats_url: str = "nats://127.0.0.1:4222"
    subjects: Subjects = field(default_factory=Subjects)
    name: str = "supervisor"
    version: str = "0.1.0"
    concurrency: int = 64
    ack_wait: float = 30.0
    max_deliver: int = 10
    cache_size: int = 50_000
    policy: Policy | None = None  # without one, steps get the tools they declare
    publish_timeout: float = 10.0
    grant_slack_s: float = 30.0
    max_bytes: int = codec.DEFAULT_MAX_BYTES
    graceful_timeout: float = 10.0
    # a finished workflow's state stays this long, then the server removes it (its outcome and
    # audit trail are kept by their streams' own limits)
    retention_s: float = 7 * 24 * 3600.0
    # extra ``nats.connect`` options: credentials and inbox prefix under a secured bus
    connect_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.workflows:
            raise ConfigError("the supervisor needs at least one workflow")
        if self.policy is not None:
            for wf in self.workflows.values():
                self.policy.check_workflow(wf)


class Supervisor:
    def __init__(self, config: SupervisorConfig, *, metrics: CollectorRegistry | None = None):
        self.config = config
        self.signer = grants.Signer(config.seed)
        self._state = _State.NEW
        self._nc: Client | None = None
        self._own_nc = False
        self._js: JetStreamContext | None = None
        self._audit: AuditLog | None = None
        self._publisher: Publisher | None = None
        self._store: WorkflowStore | None = None
        self._index: EscalationIndex | None = None
        self._catalog = WorkflowCatalog(config.workflows, policy=config.policy)
        self._service: Service | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._consumers: list[PullConsumer] = []
        # The last state this replica stored, by workflow: saves a KV read per event. Every write
        # is still a compare-and-set, so a stale entry only costs a conflict and a re-read.
        self._cache: OrderedDict[str, tuple[WorkflowState, int]] = OrderedDict()
        self._timers: list[tuple[float, str]] = []
        self._timer_wake = asyncio.Event()
        reg = metrics or CollectorRegistry()
        self._transitions = Counter(
            "switchyard_supervisor_transitions", "Applied transitions", ["event"], registry=reg
        )
        self._dead = Counter(
            "switchyard_supervisor_dead_letters", "Messages dead-lettered", ["kind"], registry=reg
        )
        self.counts = {"submitted": 0, "results": 0, "decisions": 0, "dead_lettered": 0}

    @property
    def store(self) -> WorkflowStore:
        assert self._store is not None, "supervisor not started"
        return self._store

    async def start(self, nc: Client | None = None) -> Supervisor:
        if self._state is not _State.NEW:
            raise RuntimeError(f"supervisor already {self._state.value}")
        self._state = _State.RUNNING
        cfg, s = self.config, self.config.subjects
        if nc is None:
            nc = await nats.connect(cfg.nats_url, name="sy-supervisor", **cfg.connect_options)
            self._own_nc = True
        self._nc, self._js = nc, nc.jetstream()
        js = self._js
        await ensure_streams(js, s)
        self._publisher = pub = await Publisher(nc, timeout=cfg.publish_timeout).start()
        self._audit = AuditLog(js, s, cfg.name, cache_size=cfg.cache_size,
                               timeout=cfg.publish_timeout, publisher=pub)
        self._store = await WorkflowStore.open(js, s.bucket("workflows"), publisher=pub)
        self._index = EscalationIndex(await open_bucket(js, s.bucket("escalations")))
        self._catalog = WorkflowCatalog(
            cfg.workflows, await open_bucket(js, s.bucket("workflow_defs"), history=5),
            policy=cfg.policy,
        )
        trust = await open_bucket(js, s.bucket("trust"))
        await trust.put(TRUST_KEY, self.signer.public_key.encode())
        await self._recover()
        for stream, subject, durable, handler in (
            ("workflows", s.submit, "supervisor-submit", self._on_submit),
            ("results", s.all("result"), "supervisor-results", self._on_result),
            ("human", s.human_decision, "supervisor-decisions", self._on_decision),
            ("advisories", max_deliveries_subject(s), "supervisor-advisories",
             self._on_max_deliveries),
        ):
            await js.add_consumer(s.stream(stream), ConsumerConfig(
                durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
                ack_wait=cfg.ack_wait, max_deliver=cfg.max_deliver,
                max_ack_pending=cfg.concurrency * 4,
            ))
            self._consumers.append(await PullConsumer(
                nc, s.stream(stream), durable, functools.partial(self._guarded, handler),
                capacity=cfg.concurrency).start())
        self._timer_task = asyncio.create_task(self._timer_loop())
        self._service = await add_service(
            nc,
            ServiceConfig(
                name=s.service(cfg.name), version=cfg.version,
                description="Switchyard supervisor",
                metadata={"kind": "supervisor", "workflows": ",".join(sorted(cfg.workflows)),
                          "public_key": self.signer.public_key},
                stats_handler=lambda ep: dict(self.counts),
            ),
        )
        # an endpoint of its own, so $SRV.STATS carries the counters (they are per endpoint)
        await self._service.add_endpoint(EndpointConfig(
            name="status", subject=f"{s.prefix}.supervisor.status", handler=self._answer_status))
        log.info("supervisor.started", workflows=sorted(cfg.workflows))
        return self

    async def _answer_status(self, req: Request) -> None:
        await req.respond(json.dumps({**self.counts, "cached": len(self._cache),
                                      "timers": len(self._timers)}).encode())

    async def stop(self) -> None:
        if self._state is not _State.RUNNING:
            self._state = _State.STOPPED
            return
        self._state = _State.STOPPED
        self._timer_wake.set()
        for consumer in self._consumers:
            await consumer.stop()
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
        inflight = [t for c in self._consumers for t in c.inflight]
        if inflight:
            await asyncio.wait(inflight, timeout=self.config.graceful_timeout)
        if self._service is not None:
            await self._service.stop()
        if self._publisher is not None:
            await self._publisher.stop()
        if self._own_nc and self._nc is not None:
            await self._nc.drain()
        log.info("supervisor.stopped")

    async def __aenter__(self) -> Supervisor:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # intake -----------------------------------------------------------------------------------

    async def _guarded(self, handler: Callable[[Msg], Awaitable[None]], msg: Msg) -> None:
        try:
            await handler(msg)
        except Exception:
            log.exception("supervisor.handler_failed", subject=msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    async def _on_submit(self, msg: Msg) -> None:
        self.counts["submitted"] += 1
        try:
            req = codec.decode(msg.data, WorkflowRequest, max_bytes=self.config.max_bytes)
            check_token("workflow id", req.id)
            wf = await self._catalog.latest(req.workflow)
            if wf is None:
                raise ConfigError(
                    f"unknown workflow {req.workflow!r} (known: "
                    f"{', '.join(self._catalog.names())})"
                )
        except ConfigError as exc:
            now = time.time()
            wid = safe_token(req.id)
            await self._publish_outcome(Outcome(
                workflow_id=wid, workflow=req.workflow, status="failed",
                reason=exc.message, started_at=now, finished_at=now,
            ))
            await self._record(wid, "workflow.failed", {"reason": exc.message},
                               msg_id=f"{wid}:failed")
            await self._reject(msg, "submit", ErrorCode.INVALID_INPUT, exc.message, req.id)
            return
        except ProtocolError as exc:
            await self._reject(msg, "submit", exc.code, exc.message, "")
            return
        await self._apply(wf, req.id, Submitted(req), msg)

    async def _on_result(self, msg: Msg) -> None:
        self.counts["results"] += 1
        await self._on_update(msg, "result", Result, ResultReceived)

    async def _on_decision(self, msg: Msg) -> None:
        self.counts["decisions"] += 1
        await self._on_update(msg, "decision", Decision, DecisionReceived)

    async def _on_update(
        self, msg: Msg, kind: str, message_type: type[Result] | type[Decision],
        make_event: Callable[[Any], EngineEvent],
    ) -> None:
        """A message about a running workflow: decode it, find its workflow, apply it."""
        try:
            message = codec.decode(msg.data, message_type, max_bytes=self.config.max_bytes)
        except ProtocolError as exc:
            await self._reject(msg, kind, exc.code, exc.message, "")
            return
        wf = await self._workflow_of(message.workflow_id)
        if wf is None:
            await self._reject(msg, kind, ErrorCode.INVALID_INPUT,
                               f"no workflow {message.workflow_id!r} is known",
                               message.workflow_id)
            return
        await self._apply(wf, message.workflow_id, make_event(message), msg)

    async def _on_max_deliveries(self, msg: Msg) -> None:
        """A task was delivered max_deliver times and never acknowledged (its agent died of it, or
        hung): copy it to the dead letters with why and its history, move its workflow on by the
        workflow's policy, then take it off the work queue."""
        assert self._js is not None
        s = self.config.subjects
        try:
            advisory = json.loads(msg.data)
            seq, deliveries = int(advisory["stream_seq"]), int(advisory["deliveries"])
        except (ValueError, KeyError, TypeError):
            await msg.term()
            return
        tasks = s.stream("tasks")
        try:
            raw = await self._js.get_msg(tasks, seq)
        except nats.js.errors.NotFoundError:
            await msg.ack()  # acknowledged or removed since: nothing is stuck
            return
        data = raw.data or b""
        try:
            task = codec.decode(data, Task, max_bytes=self.config.max_bytes)
        except ProtocolError:
            task = None
        reason = (f"delivered {deliveries} times to {advisory.get('consumer', '?')} and never "
                  "acknowledged")
        state = None
        if task is not None:
            state, _ = await self._load(task.workflow_id, fresh=True)
        history = [{"attempt": r.attempt, "role": r.role, "status": r.status, "error": r.error}
                   for r in (state.history if state else []) if task and r.step == task.step]
        headers = dead_letter_headers(reason=reason, code=ErrorCode.RETRIES_EXHAUSTED,
                                      subject=raw.subject or s.task("?"), source=self.config.name,
                                      stream_seq=seq, deliveries=deliveries)
        headers[DLQ_HISTORY] = json.dumps(history)[:2000]
        headers[MSG_ID] = f"dlq:task:{seq}"
        await self._js.publish(s.dlq("task"), data, headers=headers)
        self.counts["dead_lettered"] += 1
        self._dead.labels("task").inc()
        if task is not None and state is not None:
            wf = await self._catalog.running(state.workflow)
            if wf is not None:
                await self._apply(wf, task.workflow_id,
                                  TaskDeadLettered(task.step, task.attempt, reason), None)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._js.delete_msg(tasks, seq)
        await msg.ack()

    async def _workflow_of(self, workflow_id: str) -> Workflow | None:
        try:
            check_token("workflow id", workflow_id)
        except ConfigError:
            return None
        state, _ = await self._load(workflow_id)
        return await self._catalog.running(state.workflow) if state else None

    async def _load(self, workflow_id: str, *, fresh: bool = False) -> tuple[WorkflowState | None, int]:
        cached = None if fresh else self._cache.get(workflow_id)
        if cached is not None:
            return cached
        state, revision = await self.store.get(workflow_id)
        if state is not None:
            self._remember(state, revision)
        return state, revision

    def _remember(self, state: WorkflowState, revision: int) -> None:
        if state.status in TERMINAL:
            self._cache.pop(state.id, None)
            return
        self._cache[state.id] = (state, revision)
        self._cache.move_to_end(state.id)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    async def _reject(self, msg: Msg, kind: str, code: str, reason: str, workflow_id: str) -> None:
        """Dead-letter a message that cannot be processed, audit it, and ``term`` it."""
        assert self._js is not None
        s = self.config.subjects
        meta = msg.metadata
        self.counts["dead_lettered"] += 1
        self._dead.labels(kind).inc()
        log.warning("supervisor.dead_letter", kind=kind, code=code, reason=reason)
        await self._js.publish(
            s.dlq(kind), msg.data,
            headers=dead_letter_headers(
                reason=reason, code=code, subject=msg.subject, source=self.config.name,
                stream_seq=meta.sequence.stream, deliveries=meta.num_delivered,
            ),
        )
        await self._record(
            safe_token(workflow_id), f"{kind}.dead_lettered",
            {"code": code, "reason": reason, "stream_seq": meta.sequence.stream},
            msg_id=f"dlq:{kind}:{meta.sequence.stream}",
        )
        await msg.term()

    # transitions ------------------------------------------------------------------------------

    async def _apply(
        self, wf: Workflow, workflow_id: str, event: EngineEvent, msg: Msg | None
    ) -> None:
        fresh = False
        # a submission delivered the first time starts a workflow: there is nothing to read (if
        # there is, the compare-and-set fails and the loop reads it)
        new = isinstance(event, Submitted) and msg is not None and msg.metadata.num_delivered == 1
        for _ in range(20):
            if new and not fresh:
                state, revision = None, 0
            else:
                state, revision = await self._load(workflow_id, fresh=fresh)
            step = transition(wf, state, event, time.time())
            if not step.changed or step.state is None:
                if not fresh and workflow_id in self._cache:
                    # nothing to do by our cached copy; another replica may have moved the
                    # workflow on since, so ask the store before dropping the event
                    fresh = True
                    continue
                if state is not None and msg is not None and (msg.metadata.num_delivered or 1) > 1:
                    await self._execute(wf, state, due(wf, state, time.time()))
                break
            try:
                ttl = self.config.retention_s if step.state.status in TERMINAL else None
                self._remember(step.state, await self.store.put(step.state, revision, ttl=ttl))
            except RevisionConflict:
                self._cache.pop(workflow_id, None)
                fresh = True
                continue
            if state is None:
                self._audit.assume_new(workflow_id)  # type: ignore[union-attr]
            faults.hit("supervisor.after_store")
            self._transitions.labels(type(event).__name__).inc()
            await self._execute(wf, step.state, step.effects)
            break
        else:
            raise RuntimeError(f"workflow {workflow_id}: 20 revision conflicts in a row")
        if msg is not None:
            faults.hit("supervisor.before_ack")
            await msg.ack()

    async def _execute(self, wf: Workflow, state: WorkflowState, effects: list[Effect]) -> None:
        """Publish what a transition implies, pipelined: every message is sent before any ack is
        awaited. A final outcome is stored before the audit record that ends the chain (a reader
        that sees the record finds the outcome). The record goes out beside the task it implies:
        the next transition's record waits for it (appends to one chain are serialised), and a
        crash can only lose the record of the last transition, which the stored state keeps and
        ``due`` re-sends."""
        assert self._publisher is not None and self._index is not None and self._audit is not None
        s = self.config.subjects
        for effect in effects:
            if isinstance(effect, SendOutcome):
                await self._publish_outcome(effect.outcome)  # bounded by the publisher's timeout
        acks: list[Awaitable[Any]] = [
            asyncio.ensure_future(self._audit.append(state.id, effect.entries,
                                                     msg_id=effect.msg_id, n=effect.n))
            for effect in effects if isinstance(effect, SendEvent)
        ]
        for effect in effects:
            if isinstance(effect, SendTask):
                acks.append(await self._send_task(wf, state, effect))
            elif isinstance(effect, SendEscalation):
                esc = effect.escalation
                await self._index.add(esc)
                acks.append(await self._publisher.send(
                    s.human_queue_for(esc.queue), codec.encode(esc),
                    headers={MSG_ID: esc.id, PROTOCOL: PROTOCOL_VERSION,
                             TRACEPARENT: traceparent_for(state.id)}))
            elif isinstance(effect, CloseEscalation):
                await self._index.remove(effect.escalation_id)
        async with asyncio.timeout(self.config.publish_timeout):
            await asyncio.gather(*acks)
        if state.timer_at and state.status not in TERMINAL:
            self._schedule(state.timer_at, state.id)
        elif state.status in TERMINAL:
            self._audit.forget(state.id)

    async def _send_task(
        self, wf: Workflow, state: WorkflowState, effect: SendTask
    ) -> asyncio.Future[Any]:
        assert self._publisher is not None
        now = time.time()
        tools, budget, limits, approvals = effect.tools, effect.tool_budget, {}, {}
        if self.config.policy is not None:  # grants come from the policy alone
            g = self.config.policy.grantable(wf.step(effect.step), effect.role)
            tools, budget, limits, approvals = g.tools, g.budget, g.limits, g.approvals
        grant = grants.Grant(
            id=effect.task_id, workflow_id=state.id, task_id=effect.task_id, role=effect.role,
            tools=tools, budget=budget, issued_at=now, limits=limits, approvals=approvals,
            approved=effect.approved, declined=effect.declined,
            expires_at=effect.deadline + self.config.grant_slack_s, issuer=self.signer.public_key,
        )
        task = Task(
            id=effect.task_id, workflow_id=state.id, workflow=wf.name, step=effect.step,
            role=effect.role, attempt=effect.attempt, input=effect.input,
            context=wf.step(effect.step).context_of(state.input, state.outputs),
            grant=self.signer.mint(grant), deadline=effect.deadline,
        )
        return await self._publisher.send(
            self.config.subjects.task(effect.role), codec.encode(task),
            headers={MSG_ID: effect.task_id, PROTOCOL: PROTOCOL_VERSION,
                     TRACEPARENT: traceparent_for(state.id, effect.task_id)},
        )

    async def _record(self, workflow_id: str, kind: str, data: dict[str, Any],
                      *, msg_id: str) -> None:
        """An audit record outside any transition (a dead letter, a refused submission)."""
        assert self._audit is not None
        await self._audit.append(workflow_id, [Entry(type=kind, data=data)], msg_id=msg_id)

    async def _publish_outcome(self, outcome: Outcome) -> None:
        assert self._publisher is not None
        await self._publisher.publish(
            self.config.subjects.outcome(outcome.workflow_id), codec.encode(outcome),
            headers={MSG_ID: f"{outcome.workflow_id}:outcome", PROTOCOL: PROTOCOL_VERSION},
        )

    # timers and recovery ----------------------------------------------------------------------

    def _schedule(self, at: float, workflow_id: str) -> None:
        heapq.heappush(self._timers, (at, workflow_id))
        if self._timers[0][1] == workflow_id:
            self._timer_wake.set()

    async def _timer_loop(self) -> None:
        # The state is checked as well as cancellation: on Python 3.11 a cancel that lands as the
        # asyncio.timeout below expires can come out as a TimeoutError, which is suppressed here.
        while self._state is _State.RUNNING:
            self._timer_wake.clear()
            delay = self._timers[0][0] - time.time() if self._timers else 60.0
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._timer_wake.wait()
                continue
            _, workflow_id = heapq.heappop(self._timers)
            try:
                await self._fire(workflow_id)
            except Exception:
                log.exception("supervisor.timer_failed", workflow_id=workflow_id)
                self._schedule(time.time() + 1.0, workflow_id)

    async def _fire(self, workflow_id: str) -> None:
        state, _ = await self.store.get(workflow_id)
        if state is None or state.status in TERMINAL or not state.timer_kind:
            return
        if state.timer_at > time.time():
            self._schedule(state.timer_at, workflow_id)
            return
        wf = await self._catalog.running(state.workflow)
        if wf is None:
            return
        await self._apply(wf, workflow_id,
                          TimerFired(state.timer_kind, state.current, state.attempt), None)

    async def _recover(self) -> None:
        """Re-publish what every unfinished workflow's state says is due, and re-arm its timer."""
        recovered = 0
        async for state in self.store.all():
            if state.status in TERMINAL:
                continue
            wf = await self._catalog.running(state.workflow)
            if wf is None:
                log.warning("supervisor.unknown_workflow", workflow=state.workflow, id=state.id)
                continue
            await self._execute(wf, state, due(wf, state, time.time()))
            recovered += 1
        if recovered:
            log.info("supervisor.recovered", workflows=recovered)
