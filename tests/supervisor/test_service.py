"""The supervisor process against a real nats-server, with real agents on the bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from pydantic import BaseModel

from switchyard.agents import Agent, AgentConfig, Scored, TaskContext
from switchyard.client import AlreadyExists, SwitchyardClient
from switchyard.protocol import Subjects, Task, WorkflowRequest, decode, encode, grants
from switchyard.protocol.bus.provision import open_bucket
from switchyard.protocol.headers import DLQ_CODE, MSG_ID
from switchyard.supervisor import Supervisor, SupervisorConfig, Workflow
from switchyard.supervisor.catalog import put_workflow
from switchyard.supervisor.escalation import escalation_key
from switchyard.supervisor.workflow import parse_workflow

Watch = Any
PAIR = """
name: pair
steps:
  - name: first
    role: alpha
    threshold: 0.5
    routes:
      - when: "output.route == 'person'"
        to: "@human"
        reason: asked for a person
  - name: second
    role: beta
    input: {value: steps.first.value}
    context: [first]
    timeout_s: 0.3
    retries: 1
    backoff_s: 0
"""


class AlphaIn(BaseModel):
    n: int
    confidence: float = 1.0
    route: str = ""


class AlphaOut(BaseModel):
    value: int
    route: str


class BetaIn(BaseModel):
    value: int


class BetaOut(BaseModel):
    total: int


def alpha_agent() -> Agent:
    agent = Agent("alpha")

    @agent.task
    async def alpha(inp: AlphaIn, ctx: TaskContext) -> Scored[AlphaOut]:
        return Scored(AlphaOut(value=inp.n * 2, route=inp.route), confidence=inp.confidence)

    return agent


def beta_agent() -> Agent:
    agent = Agent("beta")

    @agent.task
    async def beta(inp: BetaIn, ctx: TaskContext) -> BetaOut:
        assert ctx.outputs["first"]["value"] == inp.value  # the outputs it asks for travel along
        assert ctx.workflow_input == {}  # and nothing it did not ask for
        return BetaOut(total=inp.value + 1)

    return agent


@pytest.fixture
async def stack(
    nc: Client, js: JetStreamContext, subjects: Subjects, seed: bytes, signer: grants.Signer
) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    running: list[Any] = []

    async def start(*, supervisor: bool = True, agents: tuple[str, ...] = ("alpha", "beta")) -> Any:
        if supervisor:
            sup = Supervisor(SupervisorConfig(seed=seed, workflows={"pair": parse_workflow(PAIR)},
                                              subjects=subjects), nc=nc)
            await sup.start()
            running.append(sup)
        for role in agents:
            agent = alpha_agent() if role == "alpha" else beta_agent()
            await agent.start(nc, AgentConfig(subjects=subjects,
                                              trusted_keys=frozenset({signer.public_key})))
            running.append(agent)
        return running[0] if supervisor else None

    yield start
    for part in reversed(running):
        await part.stop()


async def test_supervisor_runs_a_workflow_to_completion(
    stack: Any, nc: Client, subjects: Subjects,
) -> None:
    sup = await stack()
    client = SwitchyardClient(nc, subjects)
    wid = await client.submit("pair", {"n": 20})
    res = await client.wait(wid, timeout=10)
    assert res.status == "completed" and res.outcome is not None
    assert res.outcome.output == {"total": 41}
    assert [(s.step, s.status) for s in res.outcome.steps] == [("first", "ok"), ("second", "ok")]
    # the journal holds the inputs, and only those: the submission and one result per step
    records = await client.journal_records(wid)
    assert [r.subject for r in records] == [subjects.submit(wid), subjects.result(wid, "alpha"),
                                            subjects.result(wid, "beta")]
    assert res.outcome.journal_seq == records[-1].seq
    assert res.outcome.journal_head == records[-1].digest
    audit = await client.audit(wid, sup.definitions)
    assert audit.ok, audit.as_dict()  # links unbroken, and the replay reproduces what was sent
    assert [[e.type for e in st.transition.entries] for st in audit.replay.steps] == [
        ["workflow.submitted", "step.dispatched"], ["step.ok", "step.dispatched"],
        ["step.ok", "workflow.completed"]]
    # a finished run that never waited leaves no snapshot: its outcome is its end
    assert await sup.snapshots.get(wid) is None


async def test_supervisor_escalates_low_confidence_and_resumes_on_approval(
    stack: Any, nc: Client, subjects: Subjects,
) -> None:
    await stack()
    client = SwitchyardClient(nc, subjects)
    wid = await client.submit("pair", {"n": 1, "confidence": 0.2})
    res = await client.wait(wid, timeout=10)
    assert res.status == "escalated" and "0.20 is below the threshold 0.50" in res.reason
    (esc,) = await client.escalations()
    assert esc.workflow_id == wid and esc.output == {"value": 2, "route": ""}
    await client.decide(esc.id, "edit", reviewer="ann", output={"value": 100, "route": ""})
    done = await client.wait(wid, timeout=10, stop_at_escalation=False)
    assert done.status == "completed" and done.outcome is not None
    assert done.outcome.output == {"total": 101}
    assert await client.escalations() == []


async def test_supervisor_routes_to_a_person_and_rejection_ends_the_run(
    stack: Any, nc: Client, subjects: Subjects,
) -> None:
    await stack()
    client = SwitchyardClient(nc, subjects)
    wid = await client.submit("pair", {"n": 1, "route": "person"})
    res = await client.wait(wid, timeout=10)
    assert (res.status, res.reason) == ("escalated", "asked for a person")
    claimed = await client.claim(timeout=5)
    assert claimed is not None and claimed[0].id == res.escalation_id
    await client.decide(res.escalation_id, "reject", reviewer="bob", note="no")
    await claimed[1].ack()
    done = await client.wait(wid, timeout=10, stop_at_escalation=False)
    assert done.status == "rejected" and done.reason == "rejected by bob: no"


async def test_supervisor_times_out_retries_then_escalates(
    stack: Any, nc: Client, js: JetStreamContext, subjects: Subjects,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    await stack(agents=("alpha",))  # nobody serves beta
    client = SwitchyardClient(nc, subjects)
    wid = await client.submit("pair", {"n": 3})
    res = await client.wait(wid, timeout=10)
    assert res.status == "escalated" and "after 2 attempt(s): timeout" in res.reason
    info = (await js.stream_info(subjects.stream("tasks"))).state
    waiting = [await js.get_msg(subjects.stream("tasks"), seq)
               for seq in range(info.first_seq, info.last_seq + 1)]
    beta = [decode(m.data or b"", Task) for m in waiting if m.subject == subjects.task("beta")]
    assert [t.id for t in beta] == [f"{wid}:second:1", f"{wid}:second:2"]
    assert beta[0].grant != beta[1].grant  # a fresh grant for each attempt


async def test_supervisor_dead_letters_bad_submissions(
    stack: Any, nc: Client, js: JetStreamContext, subjects: Subjects,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    await stack(agents=())
    dlq = await watch(subjects.dlq("submit"))
    await js.publish(subjects.submit("bad-1"), b"nonsense", headers={MSG_ID: "bad-1"})
    dead = await dlq.next()
    assert dead.data == b"nonsense" and dead.headers[DLQ_CODE] == "decode_error"  # type: ignore[index]
    client = SwitchyardClient(nc, subjects)
    wid = await client.submit("no-such-flow", {})
    res = await client.wait(wid, timeout=10)
    assert res.status == "failed"
    assert res.outcome is not None and "unknown workflow 'no-such-flow'" in res.outcome.reason
    assert (await dlq.next()).headers[DLQ_CODE] == "invalid_input"  # type: ignore[index]


async def test_supervisor_dead_letters_malformed_results_and_keeps_going(
    stack: Any, nc: Client, js: JetStreamContext, subjects: Subjects,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    await stack()
    dlq = await watch(subjects.dlq("result"))
    await js.publish(subjects.result("w-odd", "alpha"), b'{"protocol": "7.0"}')
    assert (await dlq.next()).headers[DLQ_CODE] == "unsupported_version"  # type: ignore[index]
    client = SwitchyardClient(nc, subjects)
    assert (await client.wait(await client.submit("pair", {"n": 1}), timeout=10)).status == "completed"


async def test_supervisor_runs_a_resubmitted_request_once(
    stack: Any, nc: Client, js: JetStreamContext, subjects: Subjects,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    sup = await stack()
    client = SwitchyardClient(nc, subjects)
    req = WorkflowRequest(id="once", workflow="pair", input={"n": 1}, submitted_at=0)
    first = await client.journal.submit(req)
    assert await client.journal.submit(req) == first  # the same request again: accepted, once
    with pytest.raises(AlreadyExists):  # another request for the same id: refused at the door
        await client.submit("pair", {"n": 2}, workflow_id="once")
    dlq = await watch(subjects.dlq("submit"))
    # a writer that ignores the protocol (no expected sequence) gets it stored, then refused
    await js.publish(subjects.submit("once"), encode(req), headers={MSG_ID: "sneaky"})
    dead = await dlq.next()
    assert "a second submission" in dead.headers["Sy-Dlq-Reason"]  # type: ignore[index]
    res = await client.wait("once", timeout=10)
    assert res.status == "completed" and res.outcome is not None
    assert res.outcome.output == {"total": 3}
    audit = await client.audit("once", sup.definitions)
    # refused when it arrived (and dead-lettered): handled, so noted, not a broken journal
    assert audit.ok and audit.problems == [] and "a second submission" in audit.refused[0]


async def test_supervisor_runs_what_was_submitted_while_none_ran(
    stack: Any, nc: Client, subjects: Subjects,
) -> None:
    """The journal is the state: a submission made while no supervisor runs is run by the
    one that starts later."""
    client = SwitchyardClient(nc, subjects)
    await stack(supervisor=False)
    await client.submit("pair", {"n": 4}, workflow_id="early")
    await stack(agents=())
    res = await client.wait("early", timeout=10)
    assert res.status == "completed" and res.outcome is not None
    assert res.outcome.output == {"total": 9}


async def test_supervisor_runs_a_workflow_put_on_the_bus(
    stack: Any, nc: Client, js: JetStreamContext, subjects: Subjects,
) -> None:
    await stack()
    kv = await open_bucket(js, subjects.bucket("workflow_defs"))
    wf: Workflow = await put_workflow(kv, "name: solo\nsteps: [{name: only, role: alpha}]\n")
    assert wf.name == "solo"
    client = SwitchyardClient(nc, subjects)
    res = await client.wait(await client.submit("solo", {"n": 5}), timeout=10)
    assert res.status == "completed" and res.outcome is not None
    assert res.outcome.output == {"value": 10, "route": ""}


async def test_two_supervisor_replicas_run_each_workflow_once(
    nc: Client, subjects: Subjects, seed: bytes, signer: grants.Signer,
) -> None:
    """Both replicas take records off the one journal consumer, so a run's inputs alternate
    between them; each folds what it missed from the journal first. Every run completes once,
    with one result per step and a journal that replays."""
    config = SupervisorConfig(seed=seed, workflows={"pair": parse_workflow(PAIR)},
                              subjects=subjects, concurrency=4)
    sups = [await Supervisor(config, nc=await nats.connect(nc.connected_url.geturl())).start()
            for _ in range(2)]
    agents = [await a.start(nc, AgentConfig(subjects=subjects,
                                            trusted_keys=frozenset({signer.public_key})))
              for a in (alpha_agent(), beta_agent())]
    try:
        client = SwitchyardClient(nc, subjects)
        ids = [await client.submit("pair", {"n": i}) for i in range(40)]
        results = await asyncio.gather(*(client.wait(w, timeout=30) for w in ids))
        assert [r.outcome.output for r in results if r.outcome] == [
            {"total": 2 * i + 1} for i in range(40)]
        for wid in ids:
            assert len(await client.journal_records(wid)) == 3
            assert (await client.audit(wid, sups[0].definitions)).ok
        assert all(s.counts["results"] > 0 for s in sups)  # both did work
        assert sum(s.folds.caught_up for s in sups) > 0  # and folded what the other did
    finally:
        for agent in agents:
            await agent.stop()
        for sup in sups:
            await sup.stop()
            await sup.nc.close()


async def test_a_stale_fold_reads_what_it_missed_before_taking_a_record(
    stack: Any, nc: Client, subjects: Subjects,
) -> None:
    """A replica whose fold of a run is behind (another moved it on) reads the journal up to
    the record it was given: the result for the attempt the journal awaits is taken."""
    from switchyard.supervisor.journal import Folded

    sup = await stack()
    client = SwitchyardClient(nc, subjects)
    wid = await client.submit("pair", {"n": 1, "confidence": 0.2})
    held = await client.wait(wid, timeout=10)
    assert held.status == "escalated"
    first = (await client.journal_records(wid))[0]
    sup.folds.cache[wid] = Folded(None, 0, "")  # as if this replica had seen nothing of it
    await client.decide(held.escalation_id, "approve", reviewer="ann")
    done = await client.wait(wid, timeout=10, stop_at_escalation=False)
    assert done.status == "completed" and done.outcome is not None
    assert done.outcome.output == {"total": 3}
    assert first.seq < done.outcome.journal_seq


CRASHY = """
name: crashy
on_dead_letter: {policy}
steps:
  - {{name: only, role: crasher, timeout_s: 60}}
"""


@pytest.mark.parametrize("policy, status", [("escalate", "escalated"), ("fail", "failed")])
async def test_a_task_never_acknowledged_is_dead_lettered_with_its_history(
    policy: str, status: str, nc: Client, js: JetStreamContext, subjects: Subjects, seed: bytes,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    """The role's agent takes the task and dies before acking, every time (here: a consumer that
    never acks). After max_deliver deliveries the server says so; the supervisor copies the task to
    the dead letters with why and its history, moves the workflow on by its policy, and takes the
    task off the work queue."""
    from nats.js.api import AckPolicy, ConsumerConfig
    from nats.js.errors import NotFoundError

    from switchyard.protocol.headers import DLQ_DELIVERIES, DLQ_HISTORY

    dlq = await watch(subjects.dlq("task"))
    wf = parse_workflow(CRASHY.format(policy=policy))
    sup = await Supervisor(SupervisorConfig(seed=seed, workflows={"crashy": wf}, subjects=subjects),
                           nc=nc).start()
    try:
        crasher = await js.pull_subscribe(
            subjects.task("crasher"), durable="crasher", stream=subjects.stream("tasks"),
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=0.3, max_deliver=2))
        client = SwitchyardClient(nc, subjects)
        wid = await client.submit("crashy", {})
        for _ in range(2):  # taken twice, acked never
            [msg] = await crasher.fetch(1, timeout=10)
            assert msg.metadata.num_delivered == _ + 1
        with pytest.raises(nats.errors.TimeoutError):  # it asks again: the server says no more
            await crasher.fetch(1, timeout=1)
        res = await client.wait(wid, timeout=15)
        assert res.status == status and "delivered 2 times to crasher and never acknowledged" in (
            res.reason or (res.outcome.reason if res.outcome else ""))
        dead = await dlq.next()
        assert decode(dead.data, Task).workflow_id == wid  # the task's own bytes
        assert dead.headers is not None and dead.headers[DLQ_DELIVERIES] == "2"
        assert dead.headers[DLQ_CODE] == "retries_exhausted"
        assert '"status": "dispatched"' in dead.headers[DLQ_HISTORY]
        seq = int(dead.headers["Sy-Dlq-Stream-Seq"])
        with pytest.raises(NotFoundError):  # no longer stuck on the work queue
            await js.get_msg(subjects.stream("tasks"), seq)
        audit = await client.audit(wid, sup.definitions)
        assert audit.ok, audit.as_dict()  # the notice replays: the task it names was sent
        kinds = [e.type for st in audit.replay.steps for e in st.transition.entries]
        assert "step.dead_lettered" in kinds
        await crasher.unsubscribe()
    finally:
        await sup.stop()


async def test_a_finished_snapshot_ages_out_and_a_waiting_one_stays(
    nc: Client, js: JetStreamContext, subjects: Subjects, seed: bytes, signer: grants.Signer,
) -> None:
    """Snapshots do not grow without bound: one is written when a run waits for a person; when
    that run ends its last snapshot is written with a time to live and the server removes it
    (its outcome stays on the outcomes stream); one still waiting has none."""
    sup = await Supervisor(SupervisorConfig(seed=seed, workflows={"pair": parse_workflow(PAIR)},
                                            subjects=subjects, retention_s=1.0), nc=nc).start()
    agents = [await a.start(nc, AgentConfig(subjects=subjects,
                                            trusted_keys=frozenset({signer.public_key})))
              for a in (alpha_agent(), beta_agent())]
    try:
        client = SwitchyardClient(nc, subjects)
        waiting = await client.submit("pair", {"n": 1, "route": "person"})
        assert (await client.wait(waiting, timeout=10)).status == "escalated"
        done = await client.submit("pair", {"n": 2, "route": "person"})
        held = await client.wait(done, timeout=10)
        assert held.status == "escalated"
        snapshot = await sup.snapshots.get(done)
        assert snapshot is not None and snapshot.status == "waiting_human"
        watcher = await sup.snapshots.kv.watch(done)
        await client.decide(held.escalation_id, "approve", reviewer="ann")
        assert (await client.wait(done, timeout=10, stop_at_escalation=False)).status == "completed"
        async with asyncio.timeout(15):  # the server's delete marker, when the TTL runs out
            async for entry in watcher:
                if entry is not None and entry.operation is not None:
                    break
        await watcher.stop()
        assert await sup.snapshots.get(done) is None
        assert (await client.outcome(done)) is not None  # the outcome is kept by its stream
        state = await sup.snapshots.get(waiting)
        assert state is not None and state.status == "waiting_human"
    finally:
        for agent in agents:
            await agent.stop()
        await sup.stop()


WAITS = """
name: waits
human_deadline_s: 1
on_human_timeout: {policy}
re_escalate_to: leads
steps:
  - {{name: first, role: alpha, threshold: 0.9}}
"""


@pytest.mark.parametrize("policy", ["reject", "re_escalate"])
async def test_a_human_deadline_is_kept_across_a_supervisor_restart(
    policy: str, nc: Client, js: JetStreamContext, subjects: Subjects, seed: bytes,
    signer: grants.Signer, watch: Callable[[str], Awaitable[Watch]],
) -> None:
    """The escalation's deadline lives in the stored state: a supervisor started after the one
    that escalated (which is gone) carries out the workflow's timeout policy when it passes:
    refuse, or escalate again to another queue of people."""
    wf = parse_workflow(WAITS.format(policy=policy))
    config = SupervisorConfig(seed=seed, workflows={"waits": wf}, subjects=subjects)
    agent = await alpha_agent().start(nc, AgentConfig(
        subjects=subjects, trusted_keys=frozenset({signer.public_key})))
    first = await Supervisor(config, nc=nc).start()
    client = SwitchyardClient(nc, subjects)
    wid = await client.submit("waits", {"n": 1, "confidence": 0.5})
    held = await client.wait(wid, timeout=10)
    assert held.status == "escalated"
    await first.stop()  # gone before the deadline
    second = await Supervisor(config, nc=nc).start()
    try:
        if policy == "reject":
            done = await client.wait(wid, timeout=15, stop_at_escalation=False)
            assert done.status == "rejected" and "by its deadline" in done.reason
        else:
            index = await open_bucket(js, subjects.bucket("escalations"))
            watcher = await index.watch(escalation_key(f"{held.escalation_id}:r1"))
            async with asyncio.timeout(15):  # escalated again when the deadline passes
                async for entry in watcher:
                    if entry is not None and entry.value:
                        break
            await watcher.stop()
            audit = await client.audit(wid, second.definitions)
            assert audit.ok, audit.as_dict()
            timer = audit.replay.steps[-1]
            assert timer.read.kind == "timer"  # recorded by the supervisor that was running
            kinds = [e.type for e in timer.transition.entries]
            assert kinds == ["escalation.expired", "escalated"]  # to people again, in one go
            [again] = await client.escalations()
            assert (again.id, again.queue) == (f"{held.escalation_id}:r1", "leads")
            assert await client.escalations(queue="") == []
            assert await client.claim(timeout=0.5) is None  # not on the default queue any more
            claimed = await client.claim(queue="leads")  # but on the leads' queue
            assert claimed is not None and claimed[0].id == again.id
            await claimed[1].ack()
    finally:
        await second.stop()
        await agent.stop()


async def test_replay_under_a_changed_definition_names_where_it_departs(
    stack: Any, nc: Client, subjects: Subjects,
) -> None:
    """The journal records what the supervisor was told; replaying it under a definition that
    would have decided otherwise (a stricter threshold on the first step) is caught, at the
    record where the replay departs."""
    from switchyard.supervisor.catalog import WorkflowCatalog, definitions_of

    sup = await stack()
    client = SwitchyardClient(nc, subjects)
    wid = await client.submit("pair", {"n": 5, "confidence": 0.7})
    assert (await client.wait(wid, timeout=10)).status == "completed"
    assert (await client.audit(wid, sup.definitions)).ok
    stricter = parse_workflow(PAIR.replace("threshold: 0.5", "threshold: 0.9"))
    audit = await client.audit(wid, definitions_of(WorkflowCatalog({"pair": stricter})))
    records = await client.journal_records(wid)
    assert not audit.ok and audit.problems == []  # the links hold: the rules changed
    assert audit.replay.divergence.startswith(f"seq {records[2].seq} (result): a result for task "
                                              f"{wid}:second:1, which the replay never sent")
    assert audit.replay.notes and "definition" in audit.replay.notes[0]


async def test_a_step_timeout_fires_after_a_supervisor_restart(
    nc: Client, js: JetStreamContext, subjects: Subjects, seed: bytes, signer: grants.Signer,
) -> None:
    """The supervisor that dispatched the step is gone before its timeout; the one started later
    finds the task in the work queue, sets its timer, and times the step out (then retries and
    escalates, by the step's rules)."""
    config = SupervisorConfig(seed=seed, workflows={"pair": parse_workflow(PAIR)},
                              subjects=subjects)
    alpha = await alpha_agent().start(nc, AgentConfig(
        subjects=subjects, trusted_keys=frozenset({signer.public_key})))
    first = await Supervisor(config, nc=nc).start()
    client = SwitchyardClient(nc, subjects)
    tasks = await nc.subscribe(subjects.task("beta"))  # nobody serves beta
    wid = await client.submit("pair", {"n": 1})
    await tasks.next_msg(timeout=10)  # its second step is dispatched
    await first.stop()
    second = await Supervisor(config, nc=nc).start()
    try:
        res = await client.wait(wid, timeout=15)
        assert res.status == "escalated" and "after 2 attempt(s): timeout" in res.reason
        audit = await client.audit(wid, second.definitions)
        assert audit.ok, audit.as_dict()
        assert [st.read.kind for st in audit.replay.steps][-3:] == ["timer", "timer", "timer"]
    finally:
        await tasks.unsubscribe()
        await second.stop()
        await alpha.stop()


async def test_a_server_with_the_old_layout_is_refused_with_what_to_do(
    nc: Client, subjects: Subjects, seed: bytes,
) -> None:
    from nats.js.api import StreamConfig

    from switchyard.protocol.errors import ConfigError

    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=subjects.stream("results"),
                                     subjects=[f"{subjects.prefix}.result.>"]))
    sup = Supervisor(SupervisorConfig(seed=seed, workflows={"pair": parse_workflow(PAIR)},
                                      subjects=subjects), nc=nc)
    with pytest.raises(ConfigError, match=r"protocol 1 layout .* new data directory"):
        await sup.start()
    await sup.stop()


async def test_audit_tells_a_record_refused_on_arrival_from_one_slipped_in_around_it(
    nc: Client, js: JetStreamContext, subjects: Subjects, seed: bytes,
) -> None:
    """A record the supervisor refused when it arrived was handled (dead-lettered, folded as
    nothing): noted. One whose link is broken but that no supervisor refused was changed or
    inserted since: a problem."""
    from switchyard.supervisor.catalog import WorkflowCatalog, definitions_of

    client = SwitchyardClient(nc, subjects)
    await client.submit("pair", {"n": 1}, workflow_id="quiet")  # no supervisor runs yet
    ack = await js.publish(subjects.result("quiet", "alpha"), b"not json")  # nobody refuses it
    found = definitions_of(WorkflowCatalog({"pair": parse_workflow(PAIR)}))
    audit = await client.audit("quiet", found)
    assert not audit.ok and "inserted around the supervisor" in audit.problems[0]
    sup = await Supervisor(SupervisorConfig(seed=seed, workflows={"pair": parse_workflow(PAIR)},
                                            subjects=subjects), nc=nc).start()
    try:
        async with asyncio.timeout(10):
            await sup.folded("quiet", ack.seq)
        audit = await client.audit("quiet", found)
        assert audit.problems == [] and "when it arrived, and dead-lettered" in audit.refused[0]
    finally:
        await sup.stop()


async def test_a_run_keeps_its_definition_when_a_new_version_is_put(
    stack: Any, nc: Client, js: JetStreamContext, subjects: Subjects, seed: bytes,
) -> None:
    """A run started under one version of a workflow put on the bus finishes under it after a
    new version is put (its state names its definition by digest), and replays under it, also
    from a catalogue that never saw the old version (it is found in the bucket's history)."""
    from switchyard.supervisor.catalog import WorkflowCatalog, definitions_of

    await stack()
    kv = await open_bucket(js, subjects.bucket("workflow_defs"), history=5)
    await put_workflow(kv, "name: flex\nsteps: [{name: a, role: alpha, threshold: 0.5}]\n")
    client = SwitchyardClient(nc, subjects)
    wid = await client.submit("flex", {"n": 3, "confidence": 0.2})
    held = await client.wait(wid, timeout=10)
    assert held.status == "escalated"
    await put_workflow(kv, "name: flex\nsteps: [{name: b, role: beta}]\n")  # step a is gone
    await client.decide(held.escalation_id, "approve", reviewer="ann")
    done = await client.wait(wid, timeout=10, stop_at_escalation=False)
    assert done.status == "completed" and done.outcome is not None
    assert done.outcome.output == {"value": 6, "route": ""}
    fresh = definitions_of(WorkflowCatalog({"pair": parse_workflow(PAIR)}, kv))
    audit = await client.audit(wid, fresh)
    assert audit.ok, audit.as_dict()
    assert audit.replay.state is not None and audit.replay.state.outputs["a"]["value"] == 6


async def test_two_reviewers_deciding_at_once_one_decision_counts_and_the_other_is_told(
    stack: Any, nc: Client, subjects: Subjects,
) -> None:
    await stack()
    client = SwitchyardClient(nc, subjects)
    wid = await client.submit("pair", {"n": 1, "route": "person"})
    held = await client.wait(wid, timeout=10)
    results = await asyncio.gather(
        client.decide(held.escalation_id, "approve", reviewer="ann"),
        client.decide(held.escalation_id, "reject", reviewer="bob"), return_exceptions=True)
    refused = [r for r in results if isinstance(r, LookupError)]
    assert len(refused) == 1, results  # "decided already" or "no open escalation"
    [kept] = [r for r in results if not isinstance(r, BaseException)]
    done = await client.wait(wid, timeout=10, stop_at_escalation=False)
    assert done.status == ("completed" if kept.action == "approve" else "rejected")
    decisions = [r for r in await client.journal_records(wid) if r.subject == subjects.decision(wid)]
    assert len(decisions) == 1


async def test_a_stale_waiting_snapshot_of_a_finished_run_is_ended_when_its_timer_comes_due(
    stack: Any, nc: Client, subjects: Subjects,
) -> None:
    import msgspec

    sup = await stack()
    client = SwitchyardClient(nc, subjects)
    wid = await client.submit("pair", {"n": 1, "route": "person"})
    held = await client.wait(wid, timeout=10)
    waiting = await sup.snapshots.get(wid)
    assert waiting is not None and waiting.status == "waiting_human"
    await client.decide(held.escalation_id, "approve", reviewer="ann")
    assert (await client.wait(wid, timeout=10, stop_at_escalation=False)).status == "completed"
    # a slow replica writes its waiting snapshot after the end, its deadline already past
    watcher = await sup.snapshots.kv.watch(wid)
    await sup.snapshots.put(msgspec.structs.replace(waiting, timer_at=1.0))
    await sup.rearm_timers()
    async with asyncio.timeout(10):
        async for entry in watcher:
            if entry is not None and entry.value and b'"status":"completed"' in entry.value:
                break
    await watcher.stop()
