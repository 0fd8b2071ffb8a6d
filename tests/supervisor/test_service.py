"""The supervisor process against a real nats-server, with real agents on the bus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from pydantic import BaseModel

from switchyard.agents import Agent, AgentConfig, Scored, TaskContext
from switchyard.client import SwitchyardClient
from switchyard.protocol import Event, Subjects, Task, WorkflowRequest, decode, encode, grants
from switchyard.protocol.bus.provision import open_bucket
from switchyard.protocol.headers import DLQ_CODE, MSG_ID
from switchyard.supervisor import Supervisor, SupervisorConfig, Workflow
from switchyard.supervisor.catalog import put_workflow
from switchyard.supervisor.engine import Submitted, transition
from switchyard.supervisor.store import WorkflowStore
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
    stack: Any, nc: Client, subjects: Subjects, watch: Callable[[str], Awaitable[Watch]],
) -> None:
    sup = await stack()
    client = SwitchyardClient(nc, subjects)
    wid = await client.submit("pair", {"n": 20})
    res = await client.wait(wid, timeout=10)
    assert res.status == "completed" and res.outcome is not None
    assert res.outcome.output == {"total": 41}
    assert [(s.step, s.status) for s in res.outcome.steps] == [("first", "ok"), ("second", "ok")]
    state, revision = await sup.store.get(wid)
    assert state is not None and state.status == "completed" and revision > 0
    events = await watch(subjects.event(wid))
    records = [decode((await events.next()).data, Event) for _ in range(3)]
    assert [[e.type for e in r.entries] for r in records] == [  # one record per transition
        ["workflow.submitted", "step.dispatched"], ["step.ok", "step.dispatched"],
        ["step.ok", "workflow.completed"]]
    assert [r.n for r in records] == [1, 2, 3]
    assert (await client.verify(wid)).ok  # an unbroken hash chain


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
    await js.publish(subjects.submit, b"nonsense", headers={MSG_ID: "bad-1"})
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
    await js.publish(subjects.result("alpha"), b'{"protocol": "7.0"}')
    assert (await dlq.next()).headers[DLQ_CODE] == "unsupported_version"  # type: ignore[index]
    client = SwitchyardClient(nc, subjects)
    assert (await client.wait(await client.submit("pair", {"n": 1}), timeout=10)).status == "completed"


async def test_supervisor_runs_a_resubmitted_request_once(
    stack: Any, nc: Client, js: JetStreamContext, subjects: Subjects,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    await stack()
    req = WorkflowRequest(id="once", workflow="pair", input={"n": 1}, submitted_at=0)
    for msg_id in ("a", "b"):  # different message ids: JetStream cannot deduplicate these
        await js.publish(subjects.submit, encode(req), headers={MSG_ID: msg_id})
    client = SwitchyardClient(nc, subjects)
    assert (await client.wait("once", timeout=10)).status == "completed"
    events = await watch(subjects.event("once"))
    records = [decode((await events.next()).data, Event) for _ in range(4)]
    seen = [e.type for r in records for e in r.entries]
    assert seen.count("workflow.submitted") == 1
    # the second submission did not vanish: it left a trace on the workflow's chain
    [ignored] = [e for r in records for e in r.entries if e.type == "input.ignored"]
    assert ignored.data["kind"] == "submit" and "already exists" in ignored.data["reason"]
    info = await js.stream_info(subjects.stream("events"))
    assert info.state.messages == 4


async def test_supervisor_restart_republishes_what_the_state_says_is_due(
    stack: Any, nc: Client, js: JetStreamContext, subjects: Subjects,
) -> None:
    """A crash after the state was stored but before its task was published: on start, the
    supervisor reads the state and publishes what it says is due."""
    store = await WorkflowStore.open(js, subjects.bucket("workflows"))
    req = WorkflowRequest(id="crashed", workflow="pair", input={"n": 4}, submitted_at=0)
    stored = transition(parse_workflow(PAIR), None, Submitted(req), time.time()).state
    assert stored is not None
    await store.put(stored, 0)  # ... and the process died here, before any publish
    await stack()
    res = await SwitchyardClient(nc, subjects).wait("crashed", timeout=10)
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


async def test_supervisor_with_a_stale_cache_asks_the_store_before_dropping_a_result(
    stack: Any, nc: Client, js: JetStreamContext, subjects: Subjects,
) -> None:
    """Two replicas: another one moved the workflow to attempt 2; this one still caches
    attempt 1. A result for attempt 2 must be applied, not dropped as stale."""
    from switchyard.protocol import Result
    from switchyard.supervisor.engine import ResultReceived, TimerFired

    sup = await stack(agents=())
    wf = parse_workflow(PAIR)
    store = await WorkflowStore.open(js, subjects.bucket("workflows"))
    t0 = time.time()
    req = WorkflowRequest(id="stale", workflow="pair", input={"n": 2}, submitted_at=t0)
    s1 = transition(wf, None, Submitted(req), t0).state
    assert s1 is not None
    rev1 = await store.put(s1, 0)
    s2 = transition(wf, s1, TimerFired("timeout", "first", 1), s1.timer_at).state
    assert s2 is not None
    s2 = transition(wf, s2, TimerFired("retry", "first", 1), s2.timer_at).state
    assert s2 is not None and s2.attempt == 2
    await store.put(s2, rev1)  # ... written by the other replica
    sup._cache["stale"] = (s1, rev1)  # what this replica last saw
    result = Result(task_id="stale:first:2", workflow_id="stale", step="first", role="alpha",
                    attempt=2, status="ok", output={"value": 4, "route": ""})
    await sup._apply(wf, "stale", ResultReceived(result), None)
    state, _ = await store.get("stale")
    assert state is not None and state.outputs["first"] == {"value": 4, "route": ""}
    assert state.current == "second"


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
        kinds = [e.type for r in await client.events(wid) for e in r.entries]
        assert "step.dead_lettered" in kinds
        await crasher.unsubscribe()
    finally:
        await sup.stop()


async def test_a_finished_workflow_ages_out_and_a_waiting_one_stays(
    nc: Client, js: JetStreamContext, subjects: Subjects, seed: bytes, signer: grants.Signer,
) -> None:
    """State does not grow without bound: a finished workflow's state is written with a time to
    live and the server removes it (its outcome stays on the outcomes stream); one waiting for a
    person has none."""
    sup = await Supervisor(SupervisorConfig(seed=seed, workflows={"pair": parse_workflow(PAIR)},
                                            subjects=subjects, retention_s=1.0), nc=nc).start()
    agents = [await a.start(nc, AgentConfig(subjects=subjects,
                                            trusted_keys=frozenset({signer.public_key})))
              for a in (alpha_agent(), beta_agent())]
    try:
        client = SwitchyardClient(nc, subjects)
        waiting = await client.submit("pair", {"n": 1, "route": "person"})
        assert (await client.wait(waiting, timeout=10)).status == "escalated"
        done = await client.submit("pair", {"n": 2})
        watcher = await sup.store.kv.watch(done)
        assert (await client.wait(done, timeout=10)).status == "completed"
        async with asyncio.timeout(15):  # the server's delete marker, when the TTL runs out
            async for entry in watcher:
                if entry is not None and entry.operation is not None:
                    break
        await watcher.stop()
        assert (await sup.store.get(done))[0] is None
        assert (await client.outcome(done)) is not None  # the outcome is kept by its stream
        state, _ = await sup.store.get(waiting)
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
            trail = await watch(subjects.event(wid))
            expired = await trail.until(lambda m: any(
                e.type == "escalation.expired" for e in decode(m.data, Event).entries), timeout=15)
            kinds = [e.type for e in decode(expired.data, Event).entries]
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
