"""The supervisor process: takes submissions, results and decisions off the bus, runs them through
the engine, stores each transition with compare-and-set, then publishes what it implies.

A message is acked only after its transition is stored and its effects published. A redelivered
message whose transition is already stored re-publishes what the state says is due (the message
ids are deterministic, so JetStream drops duplicates): a crash between the store and the publishes
loses nothing. Nothing vanishes without a trace: an input that cannot be read, names no known
workflow or an id that is not a valid token is dead-lettered and recorded on the unattributed
chain; one the engine ignores (a stale attempt, a finished workflow, a decision for an escalation
the workflow does not hold, a second submission of an id) leaves an ``input.ignored`` record on
its workflow's chain. Tasks stuck in the work queue are handled in ``supervisor.stuck``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import BadRequestError
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, ServiceConfig
from prometheus_client import CollectorRegistry, Counter

from switchyard.protocol import codec, grants
from switchyard.protocol.bus.component import Component, ComponentConfig
from switchyard.protocol.bus.provision import WRONG_LAST_SEQUENCE, open_bucket
from switchyard.protocol.errors import ConfigError, ErrorCode, ProtocolError
from switchyard.protocol.events import EventType
from switchyard.protocol.headers import (
    EXPECTED_LAST_SUBJECT_SEQ,
    MSG_ID,
    PROTOCOL,
    TRACEPARENT,
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
from switchyard.protocol.subjects import TRUST_KEY, Bucket, DeadLetterKind, Durable, Stream, check_token
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
    TimerFired,
    WorkflowState,
    due,
    transition,
)
from switchyard.supervisor.escalation import EscalationIndex
from switchyard.supervisor.policy import Policy
from switchyard.supervisor.store import RevisionConflict, WorkflowStore
from switchyard.supervisor.stuck import StuckTasks
from switchyard.supervisor.timers import Timers
from switchyard.supervisor.workflow import Workflow

log = structlog.get_logger("switchyard.supervisor")


@dataclass(frozen=True, kw_only=True)
class SupervisorConfig(ComponentConfig):
    seed: bytes
    workflows: dict[str, Workflow]
    name: str = "supervisor"
    version: str = "0.1.0"
    concurrency: int = 64
    ack_wait: float = 30.0
    max_deliver: int = 10
    cache_size: int = 50_000
    policy: Policy | None = None  # without one, steps get the tools they declare
    grant_slack_s: float = 30.0
    # a finished workflow's state stays this long, then the server removes it (its outcome and
    # audit trail are kept by their streams' own limits)
    retention_s: float = 7 * 24 * 3600.0
    # how often the work queue is checked for tasks no consumer serves and no workflow awaits
    stuck_check_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.workflows:
            raise ConfigError("the supervisor needs at least one workflow")
        if self.policy is not None:
            for wf in self.workflows.values():
                self.policy.check_workflow(wf)


class Supervisor(Component):
    _kind = "supervisor"
    _config: SupervisorConfig

    def __init__(
        self, config: SupervisorConfig, *, nc: Client | None = None,
        metrics: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(config, nc=nc, metrics=metrics)
        self.config = config
        self.signer = grants.Signer(config.seed)
        self._store: WorkflowStore | None = None
        self._index: EscalationIndex | None = None
        self._catalog = WorkflowCatalog(config.workflows, policy=config.policy)
        # The last state this replica stored, by workflow: saves a KV read per event. Every write
        # is still a compare-and-set, so a stale entry only costs a conflict and a re-read.
        self._cache: OrderedDict[str, tuple[WorkflowState, int]] = OrderedDict()
        self._timers = Timers(self._fire)
        self._stuck = StuckTasks(self)
        reg = self._metrics_registry
        self._transitions = Counter(
            "switchyard_supervisor_transitions", "Applied transitions", ["event"], registry=reg
        )
        self._dead = Counter(
            "switchyard_supervisor_dead_letters", "Messages dead-lettered", ["kind"], registry=reg
        )
        self.counts = {"submitted": 0, "results": 0, "decisions": 0, "dead_lettered": 0,
                       "ignored": 0}

    @property
    def _name(self) -> str:
        return self.config.name

    @property
    def store(self) -> WorkflowStore:
        assert self._store is not None, "supervisor not started"
        return self._store

    @property
    def catalog(self) -> WorkflowCatalog:
        return self._catalog

    # lifecycle ---------------------------------------------------------------------------------

    async def _setup(self) -> None:
        cfg, s, js = self.config, self.config.subjects, self.js
        self.audit.cache_size = cfg.cache_size
        self._store = await WorkflowStore.open(js, s.bucket(Bucket.WORKFLOWS),
                                               publisher=self.publisher)
        self._index = EscalationIndex(await open_bucket(js, s.bucket(Bucket.ESCALATIONS)))
        self._catalog = WorkflowCatalog(
            cfg.workflows, await open_bucket(js, s.bucket(Bucket.WORKFLOW_DEFS), history=5),
            policy=cfg.policy,
        )
        trust = await open_bucket(js, s.bucket(Bucket.TRUST))
        await trust.put(TRUST_KEY, self.signer.public_key.encode())
        await self._recover()

    def _service_config(self) -> ServiceConfig:
        cfg = self.config
        return ServiceConfig(
            name=cfg.subjects.service(cfg.name), version=cfg.version,
            description="Switchyard supervisor",
            metadata={"kind": "supervisor", "workflows": ",".join(sorted(cfg.workflows)),
                      "public_key": self.signer.public_key},
            stats_handler=lambda ep: dict(self.counts),
        )

    async def _take_work(self) -> None:
        cfg, s, js = self.config, self.config.subjects, self.js
        for stream, subject, durable, handler in (
            (Stream.WORKFLOWS, s.submit, Durable.SUBMIT, self._on_submit),
            (Stream.RESULTS, s.all("result"), Durable.RESULTS, self._on_result),
            (Stream.HUMAN, s.human_decision, Durable.DECISIONS, self._on_decision),
            (Stream.ADVISORIES, s.max_deliveries, Durable.ADVISORIES, self._stuck.on_max_deliveries),
        ):
            await js.add_consumer(s.stream(stream), ConsumerConfig(
                durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
                ack_wait=cfg.ack_wait, max_deliver=cfg.max_deliver,
                max_ack_pending=cfg.concurrency * 4,
            ))
            await self._consume(s.stream(stream), durable, handler, cfg.concurrency)
        self._timers.start()
        self._stuck.start(cfg.stuck_check_s)
        assert self._service is not None
        # an endpoint of its own, so $SRV.STATS carries the counters (they are per endpoint)
        await self._service.add_endpoint(EndpointConfig(
            name="status", subject=f"{s.prefix}.supervisor.status", handler=self._answer_status))

    async def _stop_taking_work(self) -> None:
        await self._timers.stop()
        await self._stuck.stop()

    async def _answer_status(self, req: Request) -> None:
        await req.respond(json.dumps({**self.counts, "cached": len(self._cache),
                                      "timers": len(self._timers)}).encode())

    # intake -----------------------------------------------------------------------------------

    async def _on_submit(self, msg: Msg) -> None:
        self.counts["submitted"] += 1
        try:
            req = codec.decode(msg.data, WorkflowRequest, max_bytes=self.config.max_bytes)
        except ProtocolError as exc:
            await self.dead_letter(msg, DeadLetterKind.SUBMIT, exc.code, exc.message, None)
            return
        try:
            check_token("workflow id", req.id)
        except ConfigError as exc:  # no outcome either: it has no subject of its own
            await self.dead_letter(msg, DeadLetterKind.SUBMIT, ErrorCode.INVALID_INPUT,
                                   exc.message, None, claimed=req.id)
            return
        try:
            check_token("workflow", req.workflow)
            wf = await self._catalog.latest(req.workflow)
        except ConfigError as exc:  # not a name, or a definition the policy refuses
            wf, reason = None, exc.message
        else:
            reason = (f"unknown workflow {req.workflow!r} (known: "
                      f"{', '.join(self._catalog.names())})")
        if wf is None:
            existing, _ = await self._load(req.id, fresh=True)
            if existing is None:  # tell the waiting submitter, unless the id has an outcome
                await self._refused_outcome(req, reason)
            await self.dead_letter(msg, DeadLetterKind.SUBMIT, ErrorCode.INVALID_INPUT, reason,
                                   None, claimed=req.id)
            return
        await self._apply(wf, req.id, Submitted(req), msg, kind=DeadLetterKind.SUBMIT)

    async def _refused_outcome(self, req: WorkflowRequest, reason: str) -> None:
        """A failed outcome for a submission that never became a workflow, written only if that
        subject holds no outcome yet: a refused submission can never overwrite a real result."""
        now = time.time()
        outcome = Outcome(workflow_id=req.id, workflow=req.workflow, status="failed",
                          reason=reason, started_at=now, finished_at=now)
        try:
            await self.publisher.publish(
                self.config.subjects.outcome(req.id), codec.encode(outcome),
                {MSG_ID: f"{req.id}:outcome", PROTOCOL: PROTOCOL_VERSION,
                 EXPECTED_LAST_SUBJECT_SEQ: "0"})
        except BadRequestError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise

    async def _on_result(self, msg: Msg) -> None:
        self.counts["results"] += 1
        await self._on_update(msg, DeadLetterKind.RESULT, Result, ResultReceived)

    async def _on_decision(self, msg: Msg) -> None:
        self.counts["decisions"] += 1
        await self._on_update(msg, DeadLetterKind.DECISION, Decision, DecisionReceived)

    async def _on_update(
        self, msg: Msg, kind: DeadLetterKind, message_type: type[Result] | type[Decision],
        make_event: Callable[[Any], EngineEvent],
    ) -> None:
        """A message about a running workflow: decode it, find its workflow, apply it."""
        try:
            message = codec.decode(msg.data, message_type, max_bytes=self.config.max_bytes)
        except ProtocolError as exc:
            await self.dead_letter(msg, kind, exc.code, exc.message, None)
            return
        try:
            check_token("workflow id", message.workflow_id)
        except ConfigError as exc:
            await self.dead_letter(msg, kind, ErrorCode.INVALID_INPUT, exc.message, None,
                                   claimed=message.workflow_id)
            return
        wf = await self._workflow_of(message.workflow_id)
        if wf is None:
            await self.dead_letter(msg, kind, ErrorCode.INVALID_INPUT,
                                   f"no workflow {message.workflow_id!r} is known", None,
                                   claimed=message.workflow_id)
            return
        await self._apply(wf, message.workflow_id, make_event(message), msg, kind=kind)

    async def _workflow_of(self, workflow_id: str) -> Workflow | None:
        state, _ = await self._load(workflow_id)
        return await self._catalog.running(state.workflow) if state else None

    async def load(self, workflow_id: str, *, fresh: bool = False) -> tuple[WorkflowState | None, int]:
        return await self._load(workflow_id, fresh=fresh)

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

    async def dead_letter(
        self, msg: Msg, kind: DeadLetterKind, code: str, reason: str, workflow_id: str | None,
        *, claimed: str = "",
    ) -> None:
        """Dead-letter a message that cannot be processed, audit it, and ``term`` it."""
        meta = msg.metadata
        self.counts["dead_lettered"] += 1
        self._dead.labels(kind).inc()
        log.warning("supervisor.dead_letter", kind=kind, code=code, reason=reason)
        await self.dead_letters.send(
            kind, msg.data, subject=msg.subject, code=code, reason=reason,
            workflow_id=workflow_id, stream_seq=meta.sequence.stream,
            deliveries=meta.num_delivered, claimed=claimed)
        await msg.term()

    async def _ignored(self, msg: Msg, kind: DeadLetterKind, workflow_id: str, reason: str) -> None:
        """A trace for an input the engine ignored, on its workflow's own chain."""
        self.counts["ignored"] += 1
        log.info("supervisor.input_ignored", kind=kind, workflow_id=workflow_id, reason=reason)
        seq = msg.metadata.sequence.stream
        await self.audit.append(workflow_id, [Entry(
            type=EventType.INPUT_IGNORED,
            data={"kind": str(kind), "reason": reason, "stream_seq": seq})],
            msg_id=f"ignored:{kind}:{seq}")

    # transitions ------------------------------------------------------------------------------

    async def apply(self, wf: Workflow, workflow_id: str, event: EngineEvent) -> None:
        """Apply an event that arrived by no message (a timer, a dead-lettered task)."""
        await self._apply(wf, workflow_id, event, None)

    async def _apply(
        self, wf: Workflow, workflow_id: str, event: EngineEvent, msg: Msg | None,
        *, kind: DeadLetterKind | None = None,
    ) -> None:
        fresh = False
        redelivered = msg is not None and (msg.metadata.num_delivered or 1) > 1
        # a submission delivered the first time starts a workflow: there is nothing to read (if
        # there is, the compare-and-set fails and the loop reads it)
        new = isinstance(event, Submitted) and msg is not None and not redelivered
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
                if state is not None and redelivered:
                    # maybe ours, stored before a crash: re-send what it implies
                    await self._execute(wf, state, due(wf, state, time.time()))
                elif state is not None and msg is not None and kind is not None:
                    await self._ignored(msg, kind, workflow_id, step.ignored)
                break
            try:
                ttl = self.config.retention_s if step.state.status in TERMINAL else None
                self._remember(step.state, await self.store.put(step.state, revision, ttl=ttl))
            except RevisionConflict:
                self._cache.pop(workflow_id, None)
                fresh = True
                continue
            if state is None:
                self.audit.assume_new(workflow_id)
            self.faults.hit("supervisor.after_store")
            self._transitions.labels(type(event).__name__).inc()
            await self._execute(wf, step.state, step.effects)
            break
        else:
            raise RuntimeError(f"workflow {workflow_id}: 20 revision conflicts in a row")
        if msg is not None:
            self.faults.hit("supervisor.before_ack")
            await msg.ack()

    async def _execute(self, wf: Workflow, state: WorkflowState, effects: list[Effect]) -> None:
        """Publish what a transition implies. A final outcome is stored before the audit record
        that ends the chain (a reader that sees the record finds the outcome); the record is
        stored before the task or escalation it implies goes out, which are then pipelined.

        The order is what keeps the trail whole: a crash after the state is stored and before the
        record leaves nothing else on the bus, so nothing can move the workflow on until the
        redelivered input makes ``due`` re-send both. (With the record beside the task, a task
        could reach an agent, and its result another replica, while the record was lost: the
        next transition then overwrote the state that held it. The chaos suite's two-supervisor
        scenario caught that, about one run in three.)"""
        assert self._index is not None
        s, pub = self.config.subjects, self.publisher
        for effect in effects:
            if isinstance(effect, SendOutcome):
                await self._publish_outcome(effect.outcome)  # bounded by the publisher's timeout
        for effect in effects:
            if isinstance(effect, SendEvent):
                await self.audit.append(state.id, effect.entries, msg_id=effect.msg_id, n=effect.n)
        acks: list[Awaitable[Any]] = []
        for effect in effects:
            if isinstance(effect, SendTask):
                acks.append(await self._send_task(wf, state, effect))
            elif isinstance(effect, SendEscalation):
                esc = effect.escalation
                await self._index.add(esc)
                acks.append(await pub.send(
                    s.human_queue_for(esc.queue), codec.encode(esc),
                    headers={MSG_ID: esc.id, PROTOCOL: PROTOCOL_VERSION,
                             TRACEPARENT: traceparent_for(state.id)}))
            elif isinstance(effect, CloseEscalation):
                await self._index.remove(effect.escalation_id)
        async with asyncio.timeout(self.config.publish_timeout):
            await asyncio.gather(*acks)
        if state.timer_at and state.status not in TERMINAL:
            self._timers.schedule(state.timer_at, state.id)
        elif state.status in TERMINAL:
            self.audit.forget(state.id)

    async def _send_task(
        self, wf: Workflow, state: WorkflowState, effect: SendTask
    ) -> asyncio.Future[Any]:
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
        return await self.publisher.send(
            self.config.subjects.task(effect.role), codec.encode(task),
            headers={MSG_ID: effect.task_id, PROTOCOL: PROTOCOL_VERSION,
                     TRACEPARENT: traceparent_for(state.id, effect.task_id)},
        )

    async def _publish_outcome(self, outcome: Outcome) -> None:
        await self.publisher.publish(
            self.config.subjects.outcome(outcome.workflow_id), codec.encode(outcome),
            headers={MSG_ID: f"{outcome.workflow_id}:outcome", PROTOCOL: PROTOCOL_VERSION},
        )

    # timers and recovery ----------------------------------------------------------------------

    async def _fire(self, workflow_id: str) -> None:
        state, _ = await self.store.get(workflow_id)
        if state is None or state.status in TERMINAL or not state.timer_kind:
            return
        if state.timer_at > time.time():
            self._timers.schedule(state.timer_at, workflow_id)
            return
        wf = await self._catalog.running(state.workflow)
        if wf is None:
            return
        await self.apply(wf, workflow_id, TimerFired(state.timer_kind, state.current, state.attempt))

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
