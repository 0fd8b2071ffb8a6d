"""Side effects happen once per idempotency key: repeated calls get the recorded result, a call
cut off mid-way is re-run only by tools that are idempotent themselves, the rest are held for a
person."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext
from pydantic import BaseModel

from switchyard.agents import TaskContext
from switchyard.protocol import Event, Subjects, Task, ToolCall, ToolResult, decode, encode, grants
from switchyard.protocol.bus.provision import open_bucket
from switchyard.protocol.errors import ToolError
from switchyard.protocol.headers import DLQ_CODE
from switchyard.tools import ToolHost, ToolHostConfig, ToolLedger, ToolRegistry, tool
from switchyard.tools.builtin import SupportStore, support_registry

Watch = Any


@pytest.fixture
async def store_and_host(
    nc: Client, js: JetStreamContext, subjects: Subjects, signer: grants.Signer, tmp_path: Path
) -> AsyncIterator[tuple[SupportStore, ToolLedger]]:
    registry, store = support_registry(tmp_path / "support.db")
    config = ToolHostConfig(subjects=subjects, trusted_keys=frozenset({signer.public_key}))
    async with ToolHost(registry, nc=nc, config=config):
        bucket = subjects.bucket("tool_ledger")
        yield store, ToolLedger(await open_bucket(js, bucket), js, bucket)
    store.close()


def grant_for(signer: grants.Signer, tools: list[str], budget: int = 5, task: str = "w1:a:1") -> str:
    now = time.time()
    return signer.mint(grants.Grant(id=f"g{now}", workflow_id="w1", task_id=task, role="action",
                                    tools=tools, budget=budget, issued_at=now,
                                    expires_at=now + 60, issuer=""))


async def call(nc: Client, s: Subjects, tool_name: str, args: dict[str, Any], grant: str,
               key: str, task: str = "w1:a:1") -> ToolResult:
    msg = ToolCall(tool=tool_name, args=args, grant=grant, task_id=task, workflow_id="w1",
                   idempotency_key=key)
    return decode((await nc.request(s.tool(tool_name, "action"), encode(msg), timeout=5)).data, ToolResult)


REFUND = {"customer_id": "C-1001", "amount": 30, "reason": "duplicate charge"}


async def test_ledger_returns_the_recorded_result_for_a_repeated_key(
    store_and_host: Any, nc: Client, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    store, ledger = store_and_host
    events = await watch(subjects.event("w1"))
    grant = grant_for(signer, ["propose_refund"], budget=1)
    first = await call(nc, subjects, "propose_refund", REFUND, grant, "w1:action:1")
    again = await call(nc, subjects, "propose_refund", REFUND, grant, "w1:action:1")
    assert first.ok and again == first  # the same refund id, and replays cost no budget
    assert len(store.refunds()) == 1
    kinds = [decode((await events.next()).data, Event).entries[0].type for _ in range(2)]
    assert kinds == ["tool.called", "tool.replayed"]
    entry = await ledger.get("propose_refund", "w1:action:1")
    assert entry is not None and entry.state == "done"
    other = await call(nc, subjects, "propose_refund", REFUND, grant, "w1:action:2")
    assert other.error is not None and other.error.code == "budget_exhausted"  # a new call


async def test_ledger_reruns_an_idempotent_tool_cut_off_mid_call(
    store_and_host: Any, nc: Client, subjects: Subjects, signer: grants.Signer,
) -> None:
    store, ledger = store_and_host
    # the effect happened, then the host died before recording it
    assert await ledger.begin("propose_refund", "w1:action:1") is None
    refund_id = store.propose_refund("C-1001", 30, "EUR", "duplicate charge", idem_key="w1:action:1")
    res = await call(nc, subjects, "propose_refund", REFUND, grant_for(signer, ["propose_refund"]),
                     "w1:action:1")
    assert res.ok and res.result is not None and res.result["refund_id"] == refund_id
    assert len(store.refunds()) == 1
    entry = await ledger.get("propose_refund", "w1:action:1")
    assert entry is not None and entry.state == "done"


async def test_ledger_holds_a_non_idempotent_call_in_doubt_for_a_person(
    store_and_host: Any, nc: Client, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    store, ledger = store_and_host
    dlq = await watch(subjects.dlq("tool"))
    ticket = store.open_ticket(None, "s", "b", "other", "low")
    assert await ledger.begin("update_ticket", "w1:action:3") is None  # began, never finished
    res = await call(nc, subjects, "update_ticket", {"ticket_id": ticket, "status": "solved"},
                     grant_for(signer, ["update_ticket"]), "w1:action:3")
    assert res.error is not None and res.error.code == "outcome_unknown"
    assert "a person must settle it" in res.error.message
    assert (await dlq.next()).headers[DLQ_CODE] == "outcome_unknown"  # type: ignore[index]
    assert store.ticket(ticket)["status"] == "open"  # type: ignore[index]


class Ping(BaseModel):
    n: int


async def test_ledger_lets_a_retry_run_after_a_retryable_failure(
    nc: Client, js: JetStreamContext, subjects: Subjects, signer: grants.Signer,
) -> None:
    runs: list[int] = []

    @tool(side_effects=True)
    async def flaky(args: Ping) -> Ping:
        runs.append(args.n)
        if len(runs) == 1:
            raise ToolError("upstream down", retryable=True)
        return Ping(n=args.n + 1)

    config = ToolHostConfig(subjects=subjects, trusted_keys=frozenset({signer.public_key}))
    async with ToolHost(ToolRegistry([flaky]), nc=nc, config=config):
        grant = grant_for(signer, ["flaky"])
        first = await call(nc, subjects, "flaky", {"n": 1}, grant, "k1")
        assert first.error is not None and first.error.retryable
        second = await call(nc, subjects, "flaky", {"n": 1}, grant, "k1")
        third = await call(nc, subjects, "flaky", {"n": 1}, grant, "k1")
    assert second.ok and third == second and runs == [1, 1]


async def test_task_retries_make_their_calls_under_the_same_keys(
    store_and_host: Any, nc: Client, subjects: Subjects, signer: grants.Signer,
) -> None:
    store, _ = store_and_host
    for attempt in (1, 2):  # the same step, tried twice (a timeout, a redelivery)
        tid = f"w1:action:{attempt}"
        task = Task(id=tid, workflow_id="w1", workflow="support", step="action", role="action",
                    attempt=attempt, input={}, grant=grant_for(signer, ["propose_refund"], task=tid))
        ctx = TaskContext(task, nc=nc, subjects=subjects)
        await ctx.call_tool("propose_refund", REFUND)
    assert len(store.refunds()) == 1


async def test_budget_is_shared_by_host_replicas_and_survives_a_restart(
    nc: Client, js: JetStreamContext, subjects: Subjects, signer: grants.Signer, tmp_path: Path,
) -> None:
    config = ToolHostConfig(subjects=subjects, trusted_keys=frozenset({signer.public_key}))
    registry, store = support_registry(tmp_path / "support.db")
    grant = grant_for(signer, ["kb_search"], budget=3)
    async with ToolHost(registry, nc=nc, config=config), ToolHost(registry, nc=nc, config=config):
        # two replicas in one queue group: each call may go to either
        results = [await call(nc, subjects, "kb_search", {"query": "refund"}, grant, "")
                   for _ in range(4)]
    assert [r.ok for r in results] == [True, True, True, False]
    async with ToolHost(registry, nc=nc, config=config):  # a restarted host remembers
        again = await call(nc, subjects, "kb_search", {"query": "refund"}, grant, "")
    assert again.error is not None and again.error.code == "budget_exhausted"
    store.close()


async def test_a_ledger_without_a_leader_is_answered_retry_and_nothing_runs(
    nc: Client, js: JetStreamContext, subjects: Subjects, signer: grants.Signer,
) -> None:
    """The ledger's bucket electing a leader (a cluster node died) answers "no response". The
    host answered that call ``internal``, not retryable, and the supervisor sent the workflow to
    a person (64 workflows of the cluster scenario). Now: ridden out, then "retry", nothing ran."""
    runs: list[int] = []

    @tool(side_effects=True)
    async def effect(args: Ping) -> Ping:
        runs.append(args.n)
        return Ping(n=args.n)

    config = ToolHostConfig(subjects=subjects, trusted_keys=frozenset({signer.public_key}),
                            ledger_wait_s=0.3)
    bucket = subjects.bucket("tool_ledger")
    async with ToolHost(ToolRegistry([effect]), nc=nc, config=config):
        await js.delete_stream(f"KV_{bucket}")  # no stream answers its subjects now
        grant = grant_for(signer, ["effect"])
        refused = await call(nc, subjects, "effect", {"n": 1}, grant, "k1")
        assert refused.error is not None and refused.error.retryable
        assert "did not run" in refused.error.message and runs == []
        await open_bucket(js, bucket)  # the leader is back
        done = await call(nc, subjects, "effect", {"n": 1}, grant, "k1")
        again = await call(nc, subjects, "effect", {"n": 1}, grant, "k1")
    assert done.ok and again == done and runs == [1]


async def test_a_claim_whose_ack_was_lost_is_still_the_calls_own(
    js: JetStreamContext, subjects: Subjects, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim stored while its ack was lost (a leader dying between the two) is tried again:
    the key is then taken, by this very call, which must not be refused as ``outcome_unknown``."""
    bucket = subjects.bucket("tool_ledger")
    ledger = ToolLedger(await open_bucket(js, bucket), js, bucket, wait=5)
    create = ledger.kv.create
    lost: list[str] = []

    async def stored_but_unacknowledged(key: str, value: bytes, **kw: Any) -> int:
        revision = await create(key, value, **kw)
        if not lost:
            lost.append(key)
            raise NatsTimeoutError
        return revision

    monkeypatch.setattr(ledger.kv, "create", stored_but_unacknowledged)
    assert await ledger.begin("effect", "k1") is None  # ours
    assert lost and (await ledger.get("effect", "k1")).state == "started"  # type: ignore[union-attr]
    other = await ledger.begin("effect", "k1")  # another call's claim of the same key
    assert other is not None and other.state == "started"
