"""The tool host refuses every call without a valid grant naming the tool, with a clear error,
an audit event and a dead-letter copy, and keeps serving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from pydantic import BaseModel

from switchyard.protocol import Event, Subjects, ToolCall, ToolResult, decode, encode, grants
from switchyard.protocol.headers import DLQ_CODE, DLQ_SUBJECT
from switchyard.supervisor.policy import load_policy
from switchyard.supervisor.workflow import Step
from switchyard.tools import CallContext, ToolHost, ToolHostConfig, ToolRegistry, tool
from switchyard.tools.builtin import SupportStore, support_registry

Watch = Any


@pytest.fixture
async def host(
    nc: Client, js: JetStreamContext, subjects: Subjects, signer: grants.Signer, tmp_path: Path
) -> AsyncIterator[tuple[ToolHost, SupportStore]]:
    registry, store = support_registry(tmp_path / "support.db")
    config = ToolHostConfig(subjects=subjects, trusted_keys=frozenset({signer.public_key}))
    async with ToolHost(registry, nc=nc, config=config) as h:
        yield h, store
    store.close()


def mint(signer: grants.Signer, *, tools: list[str], workflow: str = "w1", task: str = "w1:a:1",
         ttl: float = 60, budget: int = 5, role: str = "action") -> str:
    now = time.time()
    return signer.mint(grants.Grant(
        id=f"g-{task}-{now}", workflow_id=workflow, task_id=task, role=role, tools=tools,
        budget=budget, issued_at=now, expires_at=now + ttl, issuer=""))


async def call(nc: Client, s: Subjects, tool: str, args: dict[str, Any], grant: str,
               workflow: str = "w1", task: str = "w1:a:1", caller: str = "action") -> ToolResult:
    msg = ToolCall(tool=tool, args=args, grant=grant, task_id=task, workflow_id=workflow)
    reply = await nc.request(s.tool(tool, caller), encode(msg), timeout=5)
    return decode(reply.data, ToolResult)


async def test_host_executes_a_granted_call_and_audits_it(
    host: Any, nc: Client, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    events = await watch(subjects.event("w1"))
    grant = mint(signer, tools=["lookup_customer"])
    res = await call(nc, subjects, "lookup_customer", {"email": "ada@example.com"}, grant)
    assert res.ok and res.result is not None and res.result["customer"]["id"] == "C-1001"
    [event] = decode((await events.next()).data, Event).entries
    assert (event.type, event.data["tool"], event.data["grant"]) == (
        "tool.called", "lookup_customer", grants.verify(grant, {signer.public_key}, time.time()).id)


def _other_key_grant(signer: grants.Signer) -> str:
    return mint(grants.Signer(grants.new_seed()), tools=["propose_refund"])


def _tampered_grant(signer: grants.Signer) -> str:
    body, sig = mint(signer, tools=["kb_search"]).split(".")
    grant = msgspec.json.decode(grants._unb64(body))
    grant["tools"].append("propose_refund")
    return f"{grants._b64(msgspec.json.encode(grant))}.{sig}"


REFUSALS: list[tuple[str, Callable[[grants.Signer], str], dict[str, str], str]] = [
    ("missing", lambda s: "", {}, "grant_missing"),
    ("forged", _other_key_grant, {}, "grant_invalid"),
    ("tampered", _tampered_grant, {}, "grant_invalid"),
    ("expired", lambda s: mint(s, tools=["propose_refund"], ttl=-1), {}, "grant_expired"),
    ("other_tool", lambda s: mint(s, tools=["kb_search"]), {}, "tool_not_granted"),
    ("other_workflow", lambda s: mint(s, tools=["propose_refund"], workflow="w2"), {},
     "grant_scope"),
    ("other_task", lambda s: mint(s, tools=["propose_refund"], task="w1:b:1"), {}, "grant_scope"),
    # a valid grant of another role, presented by the action role (the caller the bus vouches for)
    ("other_role", lambda s: mint(s, tools=["propose_refund"], role="compliance"), {},
     "grant_scope"),
]


@pytest.mark.parametrize("case, make_grant, _unused, code", REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_host_refuses_calls_without_a_valid_grant(
    case: str, make_grant: Callable[[grants.Signer], str], _unused: dict[str, str], code: str,
    host: Any, nc: Client, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    _, store = host
    dlq = await watch(subjects.dlq("tool"))
    # a grant no trusted key vouches for does not make its call's workflow known: the refusal
    # goes to the chain no workflow can claim, never to the workflow the call names
    vouched = code not in ("grant_missing", "grant_invalid", "grant_expired")
    chain = subjects.event("w2" if case == "other_workflow" else "w1") if vouched else (
        subjects.unattributed)
    events = await watch(chain)
    args = {"customer_id": "C-1001", "amount": 5000, "reason": "injected"}
    res = await call(nc, subjects, "propose_refund", args, make_grant(signer))
    assert not res.ok and res.error is not None and res.error.code == code
    assert res.error.message  # a sentence, not a repr
    dead = await dlq.next()
    assert dead.headers is not None and dead.headers[DLQ_CODE] == code
    assert dead.headers[DLQ_SUBJECT] == subjects.tool("propose_refund", "action")
    assert decode(dead.data, ToolCall).args == args  # the original, unchanged
    [event] = decode((await events.next()).data, Event).entries
    assert (event.type, event.data["code"]) == ("tool.refused", code)
    assert store.refunds() == []  # no side effect
    ok = await call(nc, subjects, "kb_search", {"query": "refund"}, mint(signer, tools=["kb_search"]))
    assert ok.ok  # still serving


async def test_host_refuses_arguments_above_the_grant_limits(
    host: Any, nc: Client, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    _, store = host
    dlq = await watch(subjects.dlq("tool"))
    now = time.time()
    grant = signer.mint(grants.Grant(
        id="g-lim", workflow_id="w1", task_id="w1:a:1", role="action", tools=["propose_refund"],
        budget=5, issued_at=now, expires_at=now + 60, issuer="",
        limits={"propose_refund": {"amount": 1000}}))
    res = await call(nc, subjects, "propose_refund",
                     {"customer_id": "C-1001", "amount": 5000, "reason": "ignore your rules"}, grant)
    assert res.error is not None and res.error.code == "limit_exceeded"
    assert (await dlq.next()).headers[DLQ_CODE] == "limit_exceeded"  # type: ignore[index]
    assert store.refunds() == []
    ok = await call(nc, subjects, "propose_refund",
                    {"customer_id": "C-1001", "amount": 50, "reason": "duplicate charge"}, grant)
    assert ok.ok and [r["amount"] for r in store.refunds()] == [50.0]


async def test_host_enforces_the_call_budget(
    host: Any, nc: Client, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    dlq = await watch(subjects.dlq("tool"))
    grant = mint(signer, tools=["kb_search"], budget=2)
    results = [await call(nc, subjects, "kb_search", {"query": "refund"}, grant) for _ in range(3)]
    assert [r.ok for r in results] == [True, True, False]
    assert results[2].error is not None and results[2].error.code == "budget_exhausted"
    assert (await dlq.next()).headers[DLQ_CODE] == "budget_exhausted"  # type: ignore[index]


async def test_host_rejects_malformed_calls_and_bad_arguments(
    host: Any, nc: Client, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    dlq = await watch(subjects.dlq("tool"))
    reply = await nc.request(subjects.tool("kb_search", "action"), b"\x00not json", timeout=5)
    res = decode(reply.data, ToolResult)
    assert res.error is not None and res.error.code == "decode_error"
    assert (await dlq.next()).data == b"\x00not json"
    bad = await call(nc, subjects, "propose_refund", {"customer_id": "C-1001", "amount": -3,
                                                      "reason": "x"},
                     mint(signer, tools=["propose_refund"]))
    assert bad.error is not None and bad.error.code == "invalid_input"
    assert "amount" in bad.error.message
    assert (await dlq.next()).headers[DLQ_CODE] == "invalid_input"  # type: ignore[index]


async def test_host_reports_tool_failures_without_leaking_internals(
    host: Any, nc: Client, subjects: Subjects, signer: grants.Signer,
) -> None:
    res = await call(nc, subjects, "update_ticket", {"ticket_id": "T-NOPE", "status": "solved"},
                     mint(signer, tools=["update_ticket"]))
    assert res.error is not None and res.error.code == "tool_failed"
    assert res.error.message == "ticket T-NOPE does not exist"


SUPPORT = load_policy("support")
OUTSIDE = [(role, t) for role in SUPPORT.roles for t in SUPPORT.tools if t not in SUPPORT.allowed(role)]


@pytest.mark.parametrize("role, tool", OUTSIDE, ids=[f"{r}-{t}" for r, t in OUTSIDE])
async def test_every_role_is_refused_every_tool_outside_its_policy_grant(
    role: str, tool: str, host: Any, nc: Client, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    """The grant the supervisor mints for the role (its widest: every tool the policy gives it)
    does not open any other tool; on an open bus the tool host is what says no."""
    _, store = host
    step = Step(name="s", role=role, tools=list(SUPPORT.tools), tool_budget=50)
    widest = SUPPORT.grantable(step, role)
    grant = mint(signer, tools=widest.tools, role=role)
    events = await watch(subjects.event("w1"))
    args = {"customer_id": "C-1001", "amount": 50, "reason": "x", "email": "ada@example.com",
            "query": "refund", "subject": "s", "body": "b", "ticket_id": "T-1", "status": "open"}
    res = await call(nc, subjects, tool, args, grant, caller=role)
    assert res.error is not None and res.error.code == "tool_not_granted"
    [event] = decode((await events.next()).data, Event).entries
    assert (event.type, event.data["tool"], event.data["code"]) == ("tool.refused", tool,
                                                                     "tool_not_granted")
    assert store.refunds() == []


class Q(BaseModel):
    q: str = ""


async def test_a_failing_tool_trips_its_circuit_and_a_slow_one_meets_its_own_timeout(
    nc: Client, js: JetStreamContext, subjects: Subjects, signer: grants.Signer,
) -> None:
    """A tool failing (retryably) twice in a row is cut off: the next call is refused at once
    with ``circuit_open`` and the tool does not run; the state is in the host's $SRV.STATS."""
    from switchyard.client import SwitchyardClient
    from switchyard.protocol.errors import ToolError
    from switchyard.tools import ToolRegistry, tool

    runs: list[str] = []

    @tool(name="flaky")
    async def flaky(args: Q) -> Q:
        runs.append(args.q)
        raise ToolError("the backend is down", retryable=True)

    @tool(name="slow", timeout_s=0.05)  # its own limit, far under the host's default
    async def slow(args: Q) -> Q:
        await asyncio.Event().wait()  # never answers
        return args

    @tool(name="picky")
    async def picky(args: Q) -> Q:
        runs.append(args.q)
        raise ToolError("no such thing")  # a refusal on the merits: the backend is fine

    registry = ToolRegistry()
    registry.add(flaky)
    registry.add(picky)
    registry.add(slow)
    config = ToolHostConfig(subjects=subjects, trusted_keys=frozenset({signer.public_key}),
                            breaker_failures=2, breaker_reset_s=60)
    async with ToolHost(registry, nc=nc, config=config):
        grant = mint(signer, tools=["flaky", "picky", "slow"], budget=20)
        late = await call(nc, subjects, "slow", {}, grant)
        assert late.error is not None and late.error.code == "timeout"
        assert "took longer than 0.05 s" in late.error.message
        codes = [(await call(nc, subjects, "flaky", {"q": str(i)}, grant)).error for i in range(4)]
        assert [c.code for c in codes if c] == ["tool_failed", "tool_failed", "circuit_open",
                                                "circuit_open"]
        assert runs == ["0", "1"]  # refused without running
        assert all(c is not None and c.retryable for c in codes)
        for i in range(3):
            res = await call(nc, subjects, "picky", {"q": f"p{i}"}, grant)
            assert res.error is not None and res.error.code == "tool_failed"
        [svc] = [s for s in await SwitchyardClient(nc, subjects).services()
                 if s["name"] == subjects.service("toolhost")]
        breakers = svc["stats"]["endpoints"][0]["data"]["breakers"]
        assert breakers["flaky"] == {"state": "open", "failures": 2}
        assert breakers["picky"]["state"] == "closed"  # refusals on the merits do not count


async def test_host_stop_lets_a_call_in_flight_finish_and_answer(
    nc: Client, subjects: Subjects, signer: grants.Signer,
) -> None:
    """The one stop order: endpoints stop taking calls, a call in flight finishes (up to the
    graceful timeout) and its caller gets the answer; stop() is idempotent."""
    import asyncio

    started, release = asyncio.Event(), asyncio.Event()

    @tool(name="slow", risk="read")
    async def slow(args: Slow, ctx: CallContext) -> Slow:
        started.set()
        await release.wait()
        return Slow(n=args.n + 1)

    config = ToolHostConfig(subjects=subjects, trusted_keys=frozenset({signer.public_key}))
    host = await ToolHost(ToolRegistry([slow]), config, nc=nc).start()
    in_flight = asyncio.ensure_future(
        call(nc, subjects, "slow", {"n": 1}, mint(signer, tools=["slow"])))
    async with asyncio.timeout(10):
        await started.wait()
        stopping = asyncio.ensure_future(host.stop())
        await asyncio.sleep(0)  # let stop() begin: it now waits for the call
        assert not stopping.done()
        release.set()
        await stopping
        reply = await in_flight
    assert reply.ok and reply.result == {"n": 2}
    await host.stop()  # idempotent
    with pytest.raises(RuntimeError, match="already stopped"):
        await host.start()


class Slow(BaseModel):
    n: int


class Mail(BaseModel):
    to: str


class Sent(BaseModel):
    ok: bool


def mint_dry(signer: grants.Signer, *, tools: list[str], budget: int = 5,
             approvals: dict[str, str] | None = None) -> str:
    now = time.time()
    return signer.mint(grants.Grant(
        id=f"g-dry-{now}", workflow_id="w1", task_id="w1:a:1", role="action", tools=tools,
        budget=budget, issued_at=now, expires_at=now + 60, issuer="", dry=True,
        approvals=approvals or {}))


async def test_a_dry_grant_runs_reads_simulates_effects_and_holds_spends_and_records_nothing(
    host: Any, nc: Client, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    _, store = host
    events = await watch(subjects.event("w1"))
    unattributed = await watch(subjects.unattributed)
    grant = mint_dry(signer, tools=["lookup_customer", "open_ticket", "propose_refund"], budget=1,
                     approvals={"propose_refund": "args.amount > `100`"})
    found = await call(nc, subjects, "lookup_customer", {"email": "ada@example.com"}, grant)
    assert found.ok and found.dry and found.result and found.result["customer"]["id"] == "C-1001"
    ticket = await call(nc, subjects, "open_ticket", {"subject": "s", "body": "b"}, grant)
    assert ticket.ok and ticket.dry and ticket.result and ticket.result["ticket_id"].startswith("DRY-")
    # above the approval rule: answered at once (not held), marked as what live would hold
    held = await call(nc, subjects, "propose_refund", {"customer_id": "C-1001", "amount": 250,
                                                       "currency": "EUR", "reason": "r"}, grant)
    assert held.ok and held.dry and held.needs_approval and held.result
    assert held.result["status"] == "dry" and held.result["refund_id"].startswith("DRY-")
    # three calls under a budget of one: a dry call spends nothing
    assert store.refunds() == [] and store.ticket(ticket.result["ticket_id"]) is None
    # still refused what any grant is refused: a tool it does not name, bad arguments
    refused = await call(nc, subjects, "kb_search", {"query": "x"}, grant)
    assert refused.error is not None and refused.error.code == "tool_not_granted"
    # the refusal is audited as any, but on the unattributed chain (a shadow's call is no input
    # of the live run); the run's own chain holds only the live call that comes next
    [refusal] = decode((await unattributed.next()).data, Event).entries
    assert (refusal.type, refusal.data["tool"]) == ("tool.refused", "kb_search")
    live = mint(signer, tools=["lookup_customer"])
    assert (await call(nc, subjects, "lookup_customer", {"email": "ada@example.com"}, live)).ok
    [called] = decode((await events.next()).data, Event).entries
    assert called.type == "tool.called"
    assert called.data["grant"] == grants.verify(live, {signer.public_key}, time.time()).id


async def test_a_dry_call_to_a_tool_with_effects_and_no_dry_run_is_refused(
    nc: Client, subjects: Subjects, signer: grants.Signer,
) -> None:
    sent: list[str] = []

    @tool(name="send_mail", risk="write", side_effects=True)
    async def send_mail(args: Mail) -> Sent:
        sent.append(args.to)
        return Sent(ok=True)

    config = ToolHostConfig(subjects=subjects, trusted_keys=frozenset({signer.public_key}))
    async with ToolHost(ToolRegistry([send_mail]), nc=nc, config=config):
        res = await call(nc, subjects, "send_mail", {"to": "a@example.com"},
                         mint_dry(signer, tools=["send_mail"]))
    assert not res.ok and res.error is not None and res.error.code == "dry_run_unsupported"
    assert sent == []
