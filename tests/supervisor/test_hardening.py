"""Bad input never vanishes and never lands on a chain it does not belong to. Each case here was
found by publishing bad messages straight onto the bus, as an outsider would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from switchyard.agents import Agent, AgentConfig, Scored, TaskContext
from switchyard.client import AlreadyExists, SwitchyardClient
from switchyard.protocol import (
    Decision,
    Event,
    Result,
    Subjects,
    Task,
    WorkflowRequest,
    decode,
    encode,
    grants,
)
from switchyard.protocol.errors import ConfigError
from switchyard.protocol.headers import DLQ_CODE, DLQ_REASON, MSG_ID
from switchyard.protocol.subjects import JournalKind
from switchyard.supervisor import Supervisor, SupervisorConfig
from switchyard.supervisor.workflow import parse_workflow

Watch = Any
FLOW = """
name: flow
steps:
  - name: first
    role: alpha
    routes:
      - when: "output.route == 'person'"
        to: "@human"
        reason: asked for a person
"""
ORPHAN = """
name: orphan
steps:
  - {name: lonely, role: gamma, timeout_s: 600}
"""


class In(BaseModel):
    n: int
    route: str = ""


class Out(BaseModel):
    value: int
    route: str


def alpha_agent() -> Agent:
    agent = Agent("alpha")

    @agent.task
    async def alpha(inp: In, ctx: TaskContext) -> Scored[Out]:
        return Scored(Out(value=inp.n * 2, route=inp.route), confidence=0.9)

    return agent


@pytest.fixture
async def stack(
    nc: Client, subjects: Subjects, seed: bytes, signer: grants.Signer,
) -> AsyncIterator[tuple[Supervisor, SwitchyardClient]]:
    sup = await Supervisor(SupervisorConfig(
        seed=seed, subjects=subjects, stuck_check_s=3600,
        workflows={"flow": parse_workflow(FLOW), "orphan": parse_workflow(ORPHAN)}), nc=nc).start()
    agent = await alpha_agent().start(nc, AgentConfig(
        subjects=subjects, trusted_keys=frozenset({signer.public_key})))
    yield sup, SwitchyardClient(nc, subjects)
    await agent.stop()
    await sup.stop()


async def test_hardening_an_id_that_is_no_token_is_refused_not_rewritten(
    stack: Any, js: JetStreamContext, subjects: Subjects, watch: Callable[[str], Awaitable[Watch]],
) -> None:
    sup, client = stack
    done = await client.wait(await client.submit("flow", {"n": 1}, workflow_id="do_ne"), timeout=10)
    assert done.status == "completed"
    before = await client.journal_records("do_ne")
    for bad in ("do.ne", "do*ne", "do>ne", ""):  # refused before anything is sent
        with pytest.raises(ConfigError, match="not a valid subject token"):
            await client.submit("flow", {"n": 1}, workflow_id=bad)
    dlq = await watch(subjects.dlq("journal"))
    unattributed = await watch(subjects.unattributed)
    # a writer that goes round the client: a token the server takes but ids may not use
    for i, bad in enumerate(("do$ne", "do#ne", "d" * 65)):
        req = WorkflowRequest(id=bad, workflow="flow", input={"n": 1}, submitted_at=0)
        await js.publish(f"{subjects.prefix}.journal.{bad}.submit", encode(req),
                         headers={MSG_ID: f"bad-{i}"})
        dead = await dlq.next()
        assert dead.headers is not None and dead.headers[DLQ_CODE] == "invalid_input"
        assert "is not a valid subject token" in dead.headers[DLQ_REASON]
        [entry] = decode((await unattributed.next()).data, Event).entries
        assert entry.type == "journal.dead_lettered"
        assert entry.data.get("claimed_workflow", "") == bad
    # a valid id of a finished workflow, submitted again: refused at the door, or (by a writer
    # that ignores the protocol) stored, refused and dead-lettered; its outcome stays
    with pytest.raises(AlreadyExists):
        await client.submit("nope", {}, workflow_id="do_ne")
    submits = await watch(subjects.dlq("submit"))
    req = WorkflowRequest(id="do_ne", workflow="nope", input={}, submitted_at=0)
    await js.publish(subjects.submit("do_ne"), encode(req), headers={MSG_ID: "bad-name"})
    assert "a second submission" in (await submits.next()).headers[DLQ_REASON]  # type: ignore[index]
    assert (await client.journal_records("do_ne"))[:len(before)] == before
    outcome = await client.outcome("do_ne")
    assert outcome is not None and outcome.status == "completed"
    audit = await client.audit("do_ne", sup.definitions)
    assert audit.ok and audit.problems == [] and audit.refused == [
        f"seq {(await client.journal_records('do_ne'))[-1].seq} (submit): refused: a second "
        "submission of workflow do_ne (when it arrived, and dead-lettered)"]
    assert (await client.verify(None)).ok  # the unattributed chain is a chain too


async def test_hardening_ignored_inputs_leave_a_trace_on_their_workflow(
    stack: Any, js: JetStreamContext, subjects: Subjects,
) -> None:
    """Inputs appended as the protocol says, that the fold ignores: each stays on its journal,
    the replay says why it changed nothing, and ``audit verify`` names what was never sent."""
    sup, client = stack
    wid = await client.submit("flow", {"n": 1})
    assert (await client.wait(wid, timeout=10)).status == "completed"
    waiting_a = await client.submit("flow", {"n": 1, "route": "person"})
    waiting_b = await client.submit("flow", {"n": 2, "route": "person"})
    esc_a = (await client.wait(waiting_a, timeout=10)).escalation_id
    assert esc_a and (await client.wait(waiting_b, timeout=10)).status == "escalated"

    async def append(workflow_id: str, kind: JournalKind, make: Any, role: str = "") -> None:
        last = (await client.journal_records(workflow_id))[-1]
        seq = (await client.journal.append(workflow_id, kind, make, after=last.seq,
                                           prev=last.digest, role=role)).seq
        async with asyncio.timeout(10):
            await sup.folded(workflow_id, seq)

    def result(workflow_id: str, attempt: int) -> Any:
        return lambda after, prev: Result(
            task_id=f"{workflow_id}:first:{attempt}", workflow_id=workflow_id, step="first",
            role="alpha", attempt=attempt, status="ok", output={"value": 9, "route": ""},
            after=after, prev=prev)

    async def ignored(workflow_id: str, n: int) -> str:
        """Why the fold ignored the journal's last record (folded by now)."""
        assert sup.counts["ignored"] == n
        audit = await client.audit(workflow_id, sup.definitions)
        last = audit.replay.steps[-1]
        assert not last.transition.changed
        return last.transition.ignored

    await append(wid, JournalKind.RESULT, result(wid, 1), "alpha")
    assert "has finished (completed)" in await ignored(wid, 1)
    await append(waiting_a, JournalKind.RESULT, result(waiting_a, 7), "alpha")
    assert "attempt 7 is no longer awaited" in await ignored(waiting_a, 2)
    audit = await client.audit(waiting_a, sup.definitions)
    assert not audit.ok and f"task {waiting_a}:first:7, which the replay never sent" in (
        audit.replay.divergence)
    # a real escalation id under another workflow's id
    await append(waiting_b, JournalKind.DECISION, lambda after, prev: Decision(
        escalation_id=esc_a, workflow_id=waiting_b, action="approve", reviewer="mallory",
        decided_at=time.time(), after=after, prev=prev))
    assert f"escalation {esc_a} is not held by workflow {waiting_b}" in await ignored(waiting_b, 3)
    assert (await client.wait(waiting_a, timeout=1)).status == "escalated"  # still waiting
    for w in (wid, waiting_a, waiting_b):
        assert (await client.audit(w, sup.definitions)).problems == []  # all linked


async def test_hardening_tasks_nobody_serves_are_shown_and_dead_lettered_unless_awaited(
    stack: Any, js: JetStreamContext, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    sup, client = stack
    dlq = await watch(subjects.dlq("task"))
    gamma = await client.nc.subscribe(subjects.task("gamma"))
    await client.submit("orphan", {"n": 1})  # a real step for a role nobody runs yet
    await gamma.next_msg(timeout=10)
    async with asyncio.timeout(10):  # published; stored a moment later, on the server's time
        while subjects.task("gamma") not in await client.unserved():  # noqa: ASYNC110 - no "stored" event
            await asyncio.sleep(0.01)
    stray = Task(id="ghost:lonely:1", workflow_id="ghost", workflow="orphan", step="lonely",
                 role="nobody", attempt=1, input={})
    await js.publish(subjects.task("nobody"), encode(stray), headers={MSG_ID: "stray"})
    await js.publish(subjects.task("nobody"), b"\xff not a task", headers={MSG_ID: "junk"})
    assert await client.unserved() == {subjects.task("gamma"): 1, subjects.task("nobody"): 2}
    assert await sup._stuck.sweep() == 2  # the two no workflow awaits
    reasons = sorted(d.headers[DLQ_REASON] for d in [await dlq.next(), await dlq.next()])
    assert all("no consumer serves" in r for r in reasons)
    assert "not a readable task" in reasons[0] and "no workflow 'ghost' is known" in reasons[1]
    assert await client.unserved() == {subjects.task("gamma"): 1}  # awaited: left for its timeout
    info = await js.stream_info(subjects.stream("tasks"), subjects_filter=subjects.task("nobody"))
    assert not info.state.subjects  # removed from the work queue
    with pytest.raises(NotFoundError):
        await js.get_last_msg(subjects.stream("tasks"), subjects.task("nobody"))


async def test_hardening_a_deeply_nested_or_unnamable_submission_is_refused_not_retried(
    stack: Any, js: JetStreamContext, subjects: Subjects, watch: Callable[[str], Awaitable[Watch]],
) -> None:
    """100,000 levels of nesting used to escape the decoder as a RecursionError (the message was
    retried for ever and never dead-lettered); a workflow name that is no token, or one the
    policy refuses, used to fail in the catalogue the same way."""
    _, client = stack
    dlq = await watch(subjects.dlq("submit"))
    deep = (b'{"id": "deep", "workflow": "flow", "submitted_at": 1, "input": {"d": '
            + b"[" * 100_000 + b"]" * 100_000 + b"}}")
    await js.publish(subjects.submit("deep"), deep, headers={MSG_ID: "deep"})
    dead = await dlq.next()
    assert dead.headers is not None and dead.headers[DLQ_CODE] == "decode_error"
    assert "nested deeper than 32 levels" in dead.headers[DLQ_REASON]
    for name in ("a b", "[bold]x", "x.y"):
        wid = await client.submit(name, {"n": 1})
        res = await client.wait(wid, timeout=10)
        assert res.status == "failed" and "unknown workflow" in res.reason
        dead = await dlq.next()
        assert dead.headers[DLQ_CODE] == "invalid_input"  # type: ignore[index]
        assert "is not a valid subject token" in dead.headers[DLQ_REASON]  # type: ignore[index]
    with pytest.raises(LookupError):  # not even a possible escalation id: no traceback
        await client.decide("", "approve", reviewer="r")
    done = await client.wait(await client.submit("flow", {"n": 1}), timeout=10)
    assert done.status == "completed"  # and the supervisor still serves
