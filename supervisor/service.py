"""The supervisor process: folds each workflow's journal and sends what the fold implies.

Every input that moves a workflow is one record on its journal (``<prefix>.journal.<id>.>``):
the submission, each result (written there by the agent), each decision, each timer that fired
and each notice, in one total order per workflow. The supervisor keeps no state of its own that
matters: a workflow's state is the engine folded over its journal (kept in memory, and in a
snapshot when the run waits or ends), and its tasks, escalations and outcome are derived from
the fold with deterministic ids. A record is acknowledged only after what it implies is sent, so
a crash anywhere is repaired by folding again: what is re-sent is dropped by JetStream as a
duplicate.

Per step that is two stored messages, the task and its result. Any number of replicas may share
the journal's durable consumer: a record tells which record it follows (the expected sequence it
was appended under), so a replica whose fold is not at that record reads what it missed from
the journal first. Timers (a step's timeout, a retry, a person's deadline) are in memory, set
from every fold, and rebuilt on start and every ``timer_scan_s`` from what the bus holds: the
tasks in the work queue and the snapshots of waiting runs. A timer that comes due is appended
to the journal only if the journal is still where the fold that set it was, so a late result
and a timeout cannot both take effect.

Nothing vanishes without a trace: a record that cannot be read, is not linked to the one before
it, or names another workflow is refused (dead-lettered, audited, and folded as changing
nothing); one on a subject whose workflow id is not a valid token goes on the unattributed
chain. Tasks stuck in the work queue are handled in ``supervisor.stuck``; copies of tasks for
shadow agents in ``supervisor.shadows``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.kv import KeyValue
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, ServiceConfig
from prometheus_client import CollectorRegistry

from switchyard.protocol import codec, grants, journal
from switchyard.protocol.bus import tracing
from switchyard.protocol.bus.component import Component, ComponentConfig
from switchyard.protocol.bus.journal import record_of_msg
from switchyard.protocol.bus.provision import open_bucket
from switchyard.protocol.bus.tasks import cancel_and_wait, periodically
from switchyard.protocol.errors import ConfigError, ErrorCode
from switchyard.protocol.headers import MSG_ID, PROTOCOL, TRACEPARENT, traceparent_for
from switchyard.protocol.journal import Read, Record
from switchyard.protocol.messages import (
    PROTOCOL_VERSION,
    Notice,
    Outcome,
    Task,
    TimerFired,
    WorkflowRequest,
)
from switchyard.protocol.subjects import (
    TRUST_KEY,
    Bucket,
    DeadLetterKind,
    Durable,
    JournalKind,
    Stream,
    check_token,
)
from switchyard.supervisor.catalog import WorkflowCatalog
from switchyard.supervisor.engine import (
    TERMINAL,
    CloseEscalation,
    Effect,
    SendEscalation,
    SendOutcome,
    SendTask,
    WorkflowState,
    due,
)
from switchyard.supervisor.escalation import EscalationIndex
from switchyard.supervisor.folds import Folds
from switchyard.supervisor.journal import definition_for, fold, snapshot_due
from switchyard.supervisor.metrics import SupervisorMetrics
from switchyard.supervisor.policy import Grantable, Policy
from switchyard.supervisor.shadows import Shadows
from switchyard.supervisor.store import Snapshots
from switchyard.supervisor.stuck import StuckTasks
from switchyard.supervisor.timers import Timers, rearm
from switchyard.supervisor.traces import decision_span, trace_waits_and_end
from switchyard.supervisor.workflow import Workflow

log = structlog.get_logger("switchyard.supervisor")

_COUNTED: dict[str, str] = {JournalKind.SUBMIT: "submitted", JournalKind.RESULT: "results",
    JournalKind.DECISION: "decisions", JournalKind.TIMER: "timers", JournalKind.NOTICE: "notices"}
_DEAD_LETTER_KIND: dict[str, DeadLetterKind] = {
    k: DeadLetterKind(k.value) for k in (JournalKind.SUBMIT, JournalKind.RESULT, JournalKind.DECISION)}


@dataclass(frozen=True, kw_only=True)
class SupervisorConfig(ComponentConfig):
    seed: bytes
    workflows: dict[str, Workflow]
    name: str = "supervisor"
    version: str = "0.2.0"
    concurrency: int = 64
    ack_wait: float = 30.0
    max_deliver: int = 10
    cache_size: int = 50_000
    policy: Policy | None = None  # without one, steps get the tools they declare
    # the model catalogue's names: a definition on the bus naming another is refused (None:
    # not checked; settings passes the catalogue's)
    models: frozenset[str] | None = None
    grant_slack_s: float = 30.0
    # a finished run's snapshot stays this long (its outcome and journal: their streams' limits)
    retention_s: float = 7 * 24 * 3600.0
    # how often the work queue is checked for tasks no consumer serves and no workflow awaits
    stuck_check_s: float = 30.0
    # how often the timers are rebuilt from the bus (queued tasks, waiting runs' snapshots)
    timer_scan_s: float = 60.0

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
        self._snapshots: Snapshots | None = None
        self._index: EscalationIndex | None = None
        self._catalog = WorkflowCatalog(config.workflows, policy=config.policy,
                                        models=config.models)
        self._grantable: dict[tuple[str, str, str], Grantable] = {}  # by definition, step, role
        self._folds: Folds | None = None  # each running workflow's fold, as this replica has it
        self._timers = Timers(self._fire)
        self._stuck = StuckTasks(self)
        self._scan: asyncio.Task[None] | None = None
        reg = self._metrics_registry
        self.metrics = SupervisorMetrics(reg)
        self.counts = {"submitted": 0, "results": 0, "decisions": 0, "timers": 0, "notices": 0,
                       "dead_lettered": 0, "ignored": 0}

    @property
    def _name(self) -> str:
        return self.config.name

    @property
    def snapshots(self) -> Snapshots:
        assert self._snapshots is not None, "supervisor not started"
        return self._snapshots

    @property
    def folds(self) -> Folds:
        assert self._folds is not None, "supervisor not started"
        return self._folds

    @property
    def catalog(self) -> WorkflowCatalog:
        return self._catalog

    # lifecycle ---------------------------------------------------------------------------------

    async def _setup(self) -> None:
        cfg, s, js = self.config, self.config.subjects, self.js
        bucket = s.bucket(Bucket.WORKFLOWS)

        def opened(name: str, history: int = 1) -> Awaitable[KeyValue]:
            return self._ride_out(lambda: open_bucket(js, name, history=history), name)

        self._snapshots = Snapshots(await opened(bucket), bucket, self.publisher)
        self._index = EscalationIndex(await opened(s.bucket(Bucket.ESCALATIONS)))
        self._catalog = WorkflowCatalog(
            cfg.workflows, await opened(s.bucket(Bucket.WORKFLOW_DEFS), history=5),
            policy=cfg.policy, models=cfg.models,
        )
        self._folds = Folds(self.journal, self.snapshots, s, self.definitions,
                            max_bytes=cfg.max_bytes, size=cfg.cache_size)
        self._shadows = Shadows(await opened(s.bucket(Bucket.SHADOWS)), s, self.publisher,
                                self.signer)
        trust = await opened(s.bucket(Bucket.TRUST))
        await self._ride_out(lambda: trust.put(TRUST_KEY, self.signer.public_key.encode()),
                             "trust key")

    def _service_config(self) -> ServiceConfig:
        cfg = self.config
        return ServiceConfig(
            name=cfg.subjects.service(cfg.name), version=cfg.version,
            description="Switchyard supervisor",
            metadata={"kind": "supervisor", "workflows": ",".join(sorted(cfg.workflows)),
                      "public_key": self.signer.public_key,
                      "policy": cfg.policy.digest() if cfg.policy is not None else ""},
            stats_handler=lambda ep: dict(self.counts),
        )

    async def _take_work(self) -> None:
        cfg, s, js = self.config, self.config.subjects, self.js
        # a journal record is never given up on (a handler that keeps failing is a bug: it is
        # logged and the record retried each second), since no advisory would catch it
        for stream, subject, durable, deliveries in (
            (Stream.JOURNAL, s.all("journal"), Durable.JOURNAL, -1),
            (Stream.ADVISORIES, s.max_deliveries, Durable.ADVISORIES, cfg.max_deliver),
        ):
            config = ConsumerConfig(
                durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
                ack_wait=cfg.ack_wait, max_deliver=deliveries,
                max_ack_pending=cfg.concurrency * 4,
            )
            await self._ride_out(functools.partial(js.add_consumer, s.stream(stream), config),
                                 durable)
        await self._ride_out(self.rearm_timers, "timers")
        for stream, durable, handler in (
            (Stream.JOURNAL, Durable.JOURNAL, self._on_record),
            (Stream.ADVISORIES, Durable.ADVISORIES, self._stuck.on_max_deliveries),
        ):
            await self._consume(s.stream(stream), durable, handler, cfg.concurrency)
        self._timers.start()
        self._stuck.start(cfg.stuck_check_s)
        self._shadows.start()
        self._scan = asyncio.create_task(periodically(cfg.timer_scan_s, self.rearm_timers,
                                                      "supervisor.timer_scan_failed"))
        assert self._service is not None
        # an endpoint of its own, so $SRV.STATS carries the counters (they are per endpoint)
        await self._service.add_endpoint(EndpointConfig(
            name="status", subject=f"{s.prefix}.supervisor.status", handler=self._answer_status))

    async def _stop_taking_work(self) -> None:
        await cancel_and_wait(self._scan)
        await self._shadows.stop()
        await self._timers.stop()
        await self._stuck.stop()

    async def _answer_status(self, req: Request) -> None:
        await req.respond(json.dumps({**self.counts, "caught_up": self.folds.caught_up,
                                      "running": self.folds.running(), "timers": len(self._timers),
                                      "journal_conflicts": self.journal.conflicts,
                                      "shadowed": self._shadows.roles()}).encode())

    # records in -------------------------------------------------------------------------------

    async def _on_record(self, msg: Msg) -> None:
        s = self.config.subjects
        parsed = s.parse_journal(msg.subject)
        workflow_id = parsed[0] if parsed else ""
        try:
            if parsed is None:
                raise ConfigError(f"{msg.subject} is not {s.prefix}.journal.<workflow id>.<kind>")
            check_token("workflow id", workflow_id)
        except ConfigError as exc:  # a subject no workflow can own: the unattributed chain
            await self.dead_letter(msg, DeadLetterKind.JOURNAL, ErrorCode.INVALID_INPUT,
                                   exc.message, None, claimed=workflow_id)
            return
        record = record_of_msg(msg)
        # the lock is taken before anything is awaited, so one workflow's records are folded in
        # the order they were delivered
        async with self.folds.lock(workflow_id):
            await self._take(workflow_id, record, msg)

    async def _take(self, workflow_id: str, record: Record, msg: Msg) -> None:
        folded = self.folds.get(workflow_id)
        if folded is None or folded.seq < record.seq:
            folded = await self.folds.before(workflow_id, record)
        if folded.seq >= record.seq:
            # folded already (a catch-up or a newer snapshot has it, or the ack was lost): make
            # sure what the fold says is due is out, then let the record go
            await self._execute(folded.state, due(await self._definition(folded.state),
                                                  folded.state, time.time())
                                if folded.state else [])
            await msg.ack()
            return
        read = journal.read(record, self.config.subjects, workflow_id, folded.seq, folded.head,
                            max_bytes=self.config.max_bytes)
        wf = await definition_for(folded, read, self.definitions)
        after, t = fold(wf, folded, read)
        self._count(read, t.ignored if not t.changed else "")
        if not read.ok:
            await self.dead_letter(msg, _DEAD_LETTER_KIND.get(read.kind, DeadLetterKind.JOURNAL),
                                   read.code or ErrorCode.INVALID_INPUT, read.refused,
                                   workflow_id, term=False)
        elif isinstance(read.message, WorkflowRequest) and wf is None:
            # the run fails at once (its outcome says why); the request is kept as bad input
            await self.dead_letter(msg, DeadLetterKind.SUBMIT, ErrorCode.INVALID_INPUT,
                                   await self._why_undefined(read.message.workflow), workflow_id,
                                   term=False)
        self.faults.hit("supervisor.after_fold")
        if after.state is not None and t.changed:
            with decision_span(workflow_id, read, record, [e.type for e in t.entries]):
                await self._execute(after.state, t.effects)
            trace_waits_and_end(folded.state, after.state, read, record)
            self.metrics.observe(folded.state, after.state, t, record)
            await self._keep(after.state)
        self.folds.remember(workflow_id, after)
        self.faults.hit("supervisor.before_ack")
        await msg.ack()

    def _count(self, read: Read, ignored: str) -> None:
        name = _COUNTED.get(read.kind)
        if name:
            self.counts[name] += 1
        self.metrics.inputs.labels(read.kind or "unknown").inc()
        if ignored and read.ok:
            self.counts["ignored"] += 1
            log.info("supervisor.input_ignored", kind=read.kind, seq=read.record.seq,
                     reason=ignored)

    async def definitions(self, name: str, digest: str) -> Workflow | None:
        """The definition of ``name`` a run started with (by its digest; "" for a new run):
        what ``fold`` and ``replay`` take as their ``Definitions``."""
        return await self._catalog.find(name, digest)

    async def _why_undefined(self, name: str) -> str:
        try:
            check_token("workflow", name)
            await self._catalog.latest(name)
        except ConfigError as exc:  # not a name, or a definition the policy refuses
            return exc.message
        return f"unknown workflow {name!r} (known: {', '.join(self._catalog.names())})"

    async def _definition(self, state: WorkflowState | None) -> Workflow | None:
        return await self._catalog.find(state.workflow, state.definition) if state else None

    async def folded(self, workflow_id: str, seq: int) -> None:
        """Return once this replica has folded ``workflow_id``'s journal up to ``seq``."""
        await self.folds.folded(workflow_id, seq)

    async def current(self, workflow_id: str) -> WorkflowState | None:
        """A workflow's state as its journal says now (read up to its last record)."""
        async with self.folds.lock(workflow_id):
            return (await self.folds.now(workflow_id)).state

    async def dead_letter(
        self, msg: Msg, kind: DeadLetterKind, code: str, reason: str, workflow_id: str | None,
        *, claimed: str = "", term: bool = True,
    ) -> None:
        """Copy a message that cannot be taken to the dead letters and audit it; ``term`` it
        unless it stays (a refused journal record is folded as changing nothing)."""
        meta = msg.metadata
        self.counts["dead_lettered"] += 1
        self.metrics.dead.labels(kind).inc()
        log.warning("supervisor.dead_letter", kind=kind, code=code, reason=reason)
        await self.dead_letters.send(
            kind, msg.data, subject=msg.subject, code=code, reason=reason,
            workflow_id=workflow_id, stream_seq=meta.sequence.stream,
            deliveries=meta.num_delivered, claimed=claimed)
        if term:
            await msg.term()

    # what a fold implies ----------------------------------------------------------------------

    async def _execute(self, state: WorkflowState | None, effects: list[Effect]) -> None:
        """Send what a fold implies: the outcome first, then tasks and escalations, pipelined.
        Their ids are deterministic, so sending them again is harmless."""
        if state is None:
            return
        assert self._index is not None
        s, pub = self.config.subjects, self.publisher
        acks: list[Awaitable[Any]] = []
        for effect in effects:
            if isinstance(effect, SendOutcome):
                acks.append(await self._send_outcome(effect.outcome))
        for effect in effects:
            if isinstance(effect, SendTask):
                acks.append(await self._send_task(state, effect))
            elif isinstance(effect, SendEscalation):
                esc = msgspec.structs.replace(effect.escalation, after=state.seq, prev=state.head)
                await self._index.add(esc)
                self.metrics.waiting.inc()
                acks.append(await pub.send(
                    s.human_queue_for(esc.queue), codec.encode(esc),
                    headers={MSG_ID: esc.id, PROTOCOL: PROTOCOL_VERSION,
                             TRACEPARENT: tracing.traceparent() or traceparent_for(state.id)}))
            elif isinstance(effect, CloseEscalation):
                await self._index.remove(effect.escalation_id)
                self.metrics.waiting.dec()
        if acks:
            async with asyncio.timeout(self.config.publish_timeout):
                await asyncio.gather(*acks)
        if state.status in TERMINAL:
            self._timers.cancel(state.id)
        elif state.timer_at:
            self._timers.schedule(state.timer_at, state.id)

    async def _keep(self, state: WorkflowState) -> None:
        """Write a snapshot when the fold says one is due (the run waits, or every 32 inputs),
        and at the end of a run that had one."""
        if state.status in TERMINAL:
            if state.snapshot:
                await self.snapshots.put(state, ttl=self.config.retention_s)
        elif snapshot_due(state, state.inputs):
            await self.snapshots.put(state)

    async def _send_task(self, state: WorkflowState, effect: SendTask) -> asyncio.Future[Any]:
        wf = await self._definition(state)
        assert wf is not None
        tools, budget, limits, approvals = effect.tools, effect.tool_budget, {}, {}
        if self.config.policy is not None:  # grants come from the policy alone
            key = (wf.digest(), effect.step, effect.role)
            if (g := self._grantable.get(key)) is None:
                g = self._grantable[key] = self.config.policy.grantable(wf.step(effect.step),
                                                                        effect.role)
            tools, budget, limits, approvals = g.tools, g.budget, g.limits, g.approvals
        step = wf.step(effect.step)
        grant = grants.Grant(
            id=effect.task_id, workflow_id=state.id, task_id=effect.task_id, role=effect.role,
            tools=tools, budget=budget, issued_at=effect.deadline - step.timeout_s, limits=limits,
            approvals=approvals, approved=effect.approved, declined=effect.declined,
            expires_at=effect.deadline + self.config.grant_slack_s, issuer=self.signer.public_key,
        )
        task = Task(
            id=effect.task_id, workflow_id=state.id, workflow=wf.name, step=effect.step,
            role=effect.role, attempt=effect.attempt, input=effect.input,
            context=step.context_of(state.input, state.outputs),
            grant=self.signer.mint(grant), deadline=effect.deadline,
            after=state.seq, prev=state.head, model=effect.model, stream=effect.stream,
            replaced=effect.replaced,
        )
        parent = tracing.traceparent() or traceparent_for(state.id, effect.task_id)
        sent = await self.publisher.send(
            self.config.subjects.task(effect.role), codec.encode(task),
            headers={MSG_ID: effect.task_id, PROTOCOL: PROTOCOL_VERSION, TRACEPARENT: parent})
        if self._shadows.active(effect.role):  # a shadow agent of the role gets a copy
            await self._shadows.copy(task, grant, parent)
        return sent

    async def _send_outcome(self, outcome: Outcome) -> asyncio.Future[Any]:
        return await self.publisher.send(
            self.config.subjects.outcome(outcome.workflow_id), codec.encode(outcome),
            headers={MSG_ID: f"{outcome.workflow_id}:outcome", PROTOCOL: PROTOCOL_VERSION},
        )

    # the supervisor's own inputs --------------------------------------------------------------

    async def _fire(self, workflow_id: str) -> None:
        """A timer came due: record it on the journal, if the journal is still where the fold
        that set it was (else what came since decides, and sets its own timers)."""
        async with self.folds.lock(workflow_id):
            folded = await self.folds.now(workflow_id)
            s = folded.state
            if s is not None and s.status in TERMINAL:
                # a waiting snapshot a slow replica wrote after the run ended: end it too
                await self._keep(s)
                return
            if s is None or not s.timer_kind:
                return
            if s.timer_at > time.time():
                self._timers.schedule(s.timer_at, workflow_id)
                return
            round_ = s.escalation.round if s.escalation is not None else 0
            timer = TimerFired(workflow_id=workflow_id, kind=s.timer_kind, step=s.current,
                               attempt=s.attempt, round=round_, after=folded.seq,
                               prev=folded.head)
            await self.journal.append_exactly(
                workflow_id, JournalKind.TIMER, timer, after=folded.seq,
                msg_id=f"{workflow_id}:timer:{s.timer_kind}:{s.current}:{s.attempt}:{round_}"
                + (f":{s.escalation.kind}" if s.escalation is not None else ""))

    async def notice(self, workflow_id: str, step: str, attempt: int, reason: str) -> None:
        """Record that the bus gave up on a task of ``workflow_id`` (the fold decides whether the
        workflow still awaited it)."""
        async with self.folds.lock(workflow_id):
            folded = await self.folds.now(workflow_id)
            if folded.state is None:
                return
            await self.journal.append(
                workflow_id, JournalKind.NOTICE,
                lambda after, prev: Notice(workflow_id=workflow_id, kind="task_dead_lettered",
                                           reason=reason, step=step, attempt=attempt,
                                           after=after, prev=prev),
                after=folded.seq, prev=folded.head,
                msg_id=f"{workflow_id}:notice:{step}:{attempt}")

    # timers from the bus ----------------------------------------------------------------------

    async def rearm_timers(self) -> int:
        """Set a timer for every task in the work queue and every waiting run's snapshot: after
        a restart, or for what a replica that stopped had set. Returns how many."""
        armed = await rearm(self._timers, self.js, self.config.subjects, self.snapshots,
                            max_bytes=self.config.max_bytes)
        if self._index is not None:  # between scans, this replica's adds and removes move it
            self.metrics.waiting.set(len(await self._index.list()))
        if armed:
            log.info("supervisor.timers_rearmed", timers=armed)
        return armed

