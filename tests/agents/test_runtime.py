"""The agent runtime against a real nats-server: acks, naks, in-progress, term, drain, and every
kind of bad task (dead-lettered, audited, the process keeps serving)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from switchyard.agents import Agent, AgentConfig, NeedsHuman, Reject, Retry, Scored, TaskContext
from switchyard.client import SwitchyardClient
from switchyard.protocol import Event, Result, Subjects, Task, decode, encode, grants
from switchyard.protocol.headers import DLQ_CODE, DLQ_STREAM_SEQ, MSG_ID

Watch = Any


class In(BaseModel):
    n: int


class Out(BaseModel):
    doubled: int


Behaviour = Callable[[In, TaskContext], Awaitable[Any]]


@pytest.fixture
async def start_agent(
    nc: Client, js: JetStreamContext, subjects: Subjects, signer: grants.Signer
) -> AsyncIterator[Callable[..., Awaitable[Agent]]]:
    started: list[Agent] = []

    async def start(behaviour: Behaviour, role: str = "doubler", **cfg: Any) -> Agent:
        agent = Agent(role, version="1.2.3")

        @agent.task
        async def handle(inp: In, ctx: TaskContext) -> Scored[Out]:
            return await behaviour(inp, ctx)  # type: ignore[no-any-return]

        config = AgentConfig(subjects=subjects, trusted_keys=frozenset({signer.public_key}),
                             **cfg)
        await agent.start(nc, config)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        await agent.stop(graceful_timeout=1)


async def double(inp: In, ctx: TaskContext) -> Scored[Out]:
    return Scored(Out(doubled=inp.n * 2), confidence=0.75)


async def gone(js: JetStreamContext, stream: str, seq: int) -> None:
    """Wait until the work queue has let message ``seq`` go: the server applies an ack or a
    term a moment after the client sends it, and tells nobody."""
    async with asyncio.timeout(5):
        while True:
            try:
                await js.get_msg(stream, seq)
            except NotFoundError:
                return
            await asyncio.sleep(0.01)


def make_task(signer: grants.Signer, n: Any = 2, *, role: str = "doubler", wf: str = "w1",
              attempt: int = 1, ttl: float = 60, grant_role: str | None = None,
              key: grants.Signer | None = None) -> Task:
    tid = f"{wf}:step:{attempt}"
    now = time.time()
    grant = (key or signer).mint(grants.Grant(
        id=tid, workflow_id=wf, task_id=tid, role=grant_role or role, tools=[], budget=0,
        issued_at=now, expires_at=now + ttl, issuer=""))
    return Task(id=tid, workflow_id=wf, workflow="test", step="step", role=role, attempt=attempt,
                input={"n": n}, grant=grant, deadline=now + 30)


async def publish(js: JetStreamContext, s: Subjects, data: bytes | Task, role: str = "doubler",
                  msg_id: str | None = None) -> int:
    body = encode(data) if isinstance(data, Task) else data
    headers = {MSG_ID: msg_id} if msg_id else None
    ack = await js.publish(s.task(role), body, headers=headers)
    return ack.seq


async def tasks_left(js: JetStreamContext, s: Subjects) -> int:
    return (await js.stream_info(s.stream("tasks"))).state.messages


async def test_runtime_publishes_result_then_acks(
    start_agent: Any, nc: Client, js: JetStreamContext, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    acks: asyncio.Queue[bytes] = asyncio.Queue()
    order: list[str] = []

    async def on_ack(msg: Any) -> None:
        order.append("ack")
        acks.put_nowait(msg.data)

    async def on_result(msg: Any) -> None:
        order.append("result")

    ack_sub = await nc.subscribe(f"$JS.ACK.{subjects.stream('tasks')}.doubler.>", cb=on_ack)
    result_sub = await nc.subscribe(f"{subjects.prefix}.journal.*.result.doubler", cb=on_result)
    results = await watch(f"{subjects.prefix}.journal.*.result.doubler")
    agent = await start_agent(double)
    await publish(js, subjects, make_task(signer, 21))
    msg = await results.next()
    result = decode(msg.data, Result)
    assert (result.status, result.output, result.confidence) == ("ok", {"doubled": 42}, 0.75)
    assert msg.headers is not None and msg.headers[MSG_ID] == "w1:step:1:result"
    async with asyncio.timeout(5):
        assert await acks.get() in (b"", b"+ACK")  # an empty body is an ack too
    assert order == ["result", "ack"]  # acked only after the result was stored
    assert await tasks_left(js, subjects) == 0  # the work queue dropped the acked task
    assert agent.counters.ok == 1
    await ack_sub.unsubscribe()
    await result_sub.unsubscribe()


async def test_runtime_needs_human_and_handler_crash_become_results(
    start_agent: Any, js: JetStreamContext, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    async def behave(inp: In, ctx: TaskContext) -> Scored[Out]:
        if inp.n == 1:
            raise NeedsHuman("unsure", confidence=0.2, output=Out(doubled=0))
        raise RuntimeError("secret internal detail")

    results = await watch(f"{subjects.prefix}.journal.*.result.doubler")
    await start_agent(behave)
    await publish(js, subjects, make_task(signer, 1, wf="a"))
    await publish(js, subjects, make_task(signer, 2, wf="b"))
    got = {r.workflow_id: r for r in [decode((await results.next()).data, Result) for _ in "ab"]}
    assert (got["a"].status, got["a"].reason, got["a"].confidence) == ("needs_human", "unsure", 0.2)
    assert got["b"].status == "error" and got["b"].error is not None
    assert got["b"].error.code == "internal"
    assert "secret" not in got["b"].error.message  # no repr(exc) on the wire


async def test_runtime_naks_retry_with_delay_and_redelivers(
    start_agent: Any, js: JetStreamContext, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    deliveries: list[float] = []

    async def flaky(inp: In, ctx: TaskContext) -> Scored[Out]:
        deliveries.append(time.monotonic())
        if len(deliveries) < 3:
            raise Retry("upstream busy", delay=0.2)
        return Scored(Out(doubled=1))

    results = await watch(f"{subjects.prefix}.journal.*.result.doubler")
    agent = await start_agent(flaky)
    await publish(js, subjects, make_task(signer))
    assert decode((await results.next()).data, Result).status == "ok"
    assert len(deliveries) == 3 and agent.counters.retried == 2
    assert deliveries[1] - deliveries[0] >= 0.19  # the nak carried the delay ...
    assert deliveries[2] - deliveries[1] >= 0.39  # ... doubled on the next delivery


async def test_runtime_gives_up_after_max_deliver(
    start_agent: Any, js: JetStreamContext, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    async def never(inp: In, ctx: TaskContext) -> Scored[Out]:
        raise Retry("still down", delay=0.01)

    results = await watch(f"{subjects.prefix}.journal.*.result.doubler")
    await start_agent(never, max_deliver=3)
    await publish(js, subjects, make_task(signer))
    result = decode((await results.next()).data, Result)
    assert result.error is not None and result.error.code == "retries_exhausted"
    assert result.error.retryable and "after 3 deliveries" in result.error.message


async def test_runtime_sends_in_progress_while_a_long_handler_runs(
    start_agent: Any, nc: Client, js: JetStreamContext, subjects: Subjects,
    signer: grants.Signer, watch: Callable[[str], Awaitable[Watch]],
) -> None:
    release = asyncio.Event()
    calls = 0

    async def slow(inp: In, ctx: TaskContext) -> Scored[Out]:
        nonlocal calls
        calls += 1
        await release.wait()
        return Scored(Out(doubled=0))

    heartbeats: asyncio.Queue[bytes] = asyncio.Queue()

    async def seen(msg: Any) -> None:
        heartbeats.put_nowait(msg.data)

    acks = await nc.subscribe(f"$JS.ACK.{subjects.stream('tasks')}.doubler.>", cb=seen)
    results = await watch(f"{subjects.prefix}.journal.*.result.doubler")
    await start_agent(slow, ack_wait=0.6)
    await publish(js, subjects, make_task(signer))
    async with asyncio.timeout(10):
        for _ in range(4):  # four heartbeats, 0.2 s apart, outlast the 0.6 s ack wait
            while await heartbeats.get() != b"+WPI":
                pass
    release.set()
    assert decode((await results.next()).data, Result).status == "ok"
    assert calls == 1  # the lease held: never redelivered
    await acks.unsubscribe()


BAD_TASKS: list[tuple[str, Callable[[grants.Signer], bytes], str]] = [
    ("malformed", lambda s: b'{"protocol": "2.0", "id": ', "decode_error"),
    ("wrong_schema", lambda s: b'{"protocol": "2.0", "id": "x"}', "decode_error"),
    ("unknown_version", lambda s: encode(make_task(s)).replace(b'"2.0"', b'"3.0"'),
     "unsupported_version"),
    ("oversized", lambda s: encode(make_task(s, "x" * 5000)), "message_too_large"),
    ("forged_grant", lambda s: encode(make_task(s, key=grants.Signer(grants.new_seed()))),
     "grant_invalid"),
    ("no_grant", lambda s: encode(Task(id="w1:step:1", workflow_id="w1", workflow="t",
                                       step="step", role="doubler", attempt=1, input={"n": 1})),
     "grant_missing"),
    ("expired_grant", lambda s: encode(make_task(s, ttl=-5)), "grant_expired"),
    ("grant_for_another_role", lambda s: encode(make_task(s, grant_role="action")),
     "grant_scope"),
]


@pytest.mark.parametrize("case, make, code", BAD_TASKS, ids=[b[0] for b in BAD_TASKS])
async def test_runtime_dead_letters_bad_tasks_and_keeps_serving(
    case: str, make: Callable[[grants.Signer], bytes], code: str,
    start_agent: Any, js: JetStreamContext, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    dlq = await watch(subjects.dlq("task"))
    # none of these is vouched for by a valid grant: the record goes to the chain no workflow
    # can claim, never to the workflow the task names
    events = await watch(subjects.unattributed)
    results = await watch(f"{subjects.prefix}.journal.*.result.doubler")
    agent = await start_agent(double, max_bytes=4096)
    bad = make(signer)
    seq = await publish(js, subjects, bad, msg_id="bad")
    dead = await dlq.next()
    assert dead.data == bad  # the original bytes, nothing lost
    assert dead.headers is not None and dead.headers[DLQ_CODE] == code
    assert dead.headers[DLQ_STREAM_SEQ] == str(seq)
    audit = decode((await events.until(
        lambda m: decode(m.data, Event).entries[0].type == "task.dead_lettered")).data,
        Event).entries[0]
    assert audit.data["code"] == code and audit.data["reason"]
    await publish(js, subjects, make_task(signer, 5, wf="good"))
    good = decode((await results.next()).data, Result)
    assert (good.workflow_id, good.status) == ("good", "ok")  # still serving
    assert agent.counters.dead_lettered == 1
    await gone(js, subjects.stream("tasks"), seq)  # terminated, not redelivered forever


async def test_runtime_answers_invalid_input_with_an_error_result_and_a_dead_letter(
    start_agent: Any, js: JetStreamContext, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    dlq = await watch(subjects.dlq("task"))
    results = await watch(f"{subjects.prefix}.journal.*.result.doubler")
    await start_agent(double)
    await publish(js, subjects, make_task(signer, "not a number"))
    result = decode((await results.next()).data, Result)
    assert result.error is not None and result.error.code == "invalid_input"
    assert "n:" in result.error.message and not result.error.retryable
    assert (await dlq.next()).headers[DLQ_CODE] == "invalid_input"  # type: ignore[index]


async def test_runtime_reject_terminates_and_dead_letters(
    start_agent: Any, js: JetStreamContext, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    async def refuse(inp: In, ctx: TaskContext) -> Scored[Out]:
        raise Reject("cannot ever work")

    dlq = await watch(subjects.dlq("task"))
    results = await watch(f"{subjects.prefix}.journal.*.result.doubler")
    await start_agent(refuse)
    await publish(js, subjects, make_task(signer))
    assert decode((await results.next()).data, Result).error.code == "rejected"  # type: ignore[union-attr]
    assert (await dlq.next()).headers[DLQ_CODE] == "rejected"  # type: ignore[index]


async def test_runtime_bounds_concurrency(
    start_agent: Any, js: JetStreamContext, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    running = peak = 0
    two_running = asyncio.Event()
    release = asyncio.Event()

    async def hold(inp: In, ctx: TaskContext) -> Scored[Out]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 2:
            two_running.set()
        await release.wait()
        running -= 1
        return Scored(Out(doubled=0))

    results = await watch(f"{subjects.prefix}.journal.*.result.doubler")
    await start_agent(hold, concurrency=2)
    for i in range(6):
        await publish(js, subjects, make_task(signer, wf=f"w{i}"))
    async with asyncio.timeout(10):
        await two_running.wait()
    release.set()
    for _ in range(6):
        await results.next()
    assert peak == 2


async def test_runtime_stop_drains_in_flight_work_and_takes_nothing_new(
    start_agent: Any, js: JetStreamContext, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def hold(inp: In, ctx: TaskContext) -> Scored[Out]:
        entered.set()
        await release.wait()
        return Scored(Out(doubled=inp.n))

    results = await watch(f"{subjects.prefix}.journal.*.result.doubler")
    agent = await start_agent(hold)
    await publish(js, subjects, make_task(signer, 7))
    async with asyncio.timeout(10):
        await entered.wait()
    stopping = asyncio.create_task(agent.stop(graceful_timeout=10))
    await asyncio.sleep(0)  # let stop() cancel the fetch loop before the handler finishes
    release.set()
    await stopping
    assert decode((await results.next()).data, Result).output == {"doubled": 7}
    await publish(js, subjects, make_task(signer, 8, wf="late"))
    assert await tasks_left(js, subjects) == 1  # nobody took it


async def test_runtime_registers_a_micro_service_for_discovery(
    start_agent: Any, nc: Client, subjects: Subjects,
) -> None:
    await start_agent(double)
    (svc,) = await SwitchyardClient(nc, subjects).services()
    assert svc["name"] == subjects.service("agent-doubler") and svc["version"] == "1.2.3"
    assert svc["metadata"]["role"] == "doubler"
    info = (await SwitchyardClient(nc, subjects)._gather("$SRV.INFO", 0.5))[0]
    assert "doubled" in info["endpoints"][0]["metadata"]["output_schema"]
    assert svc["stats"]["endpoints"][0]["data"]["received"] == 0
    reply = await nc.request(f"{subjects.prefix}.agent.doubler.schema", b"", timeout=5)
    assert b'"doubled"' in reply.data and b'"n"' in reply.data


def test_runtime_rejects_handlers_without_models() -> None:
    from switchyard.protocol.errors import ConfigError

    agent = Agent("x")
    with pytest.raises(ConfigError, match="pydantic model"):
        @agent.task
        async def bad(inp: dict, ctx: TaskContext) -> Out:  # type: ignore[type-arg]
            return Out(doubled=1)


async def test_runtime_answers_a_task_taken_after_its_deadline_without_running_it(
    start_agent: Any, js: JetStreamContext, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    """A task that waited in the queue past its deadline has been timed out by the supervisor:
    running it would repeat work (and tool calls) for a result nobody waits for. Under load this
    was a retry storm: the full chaos run escalated 552 of 1000 workflows before it was fixed."""
    calls = 0

    async def counted(inp: In, ctx: TaskContext) -> Scored[Out]:
        nonlocal calls
        calls += 1
        return Scored(Out(doubled=inp.n * 2))

    results = await watch(f"{subjects.prefix}.journal.*.result.doubler")
    await start_agent(counted)
    late = msgspec.structs.replace(make_task(signer, wf="late"), deadline=time.time() - 1)
    seq = await publish(js, subjects, late)
    result = decode((await results.next()).data, Result)
    assert (result.workflow_id, result.status) == ("late", "error")
    assert result.error is not None and result.error.code == "timeout"
    assert "after the task deadline" in result.error.message and calls == 0
    await publish(js, subjects, make_task(signer, 4, wf="on_time"))
    on_time = decode((await results.next()).data, Result)
    assert (on_time.workflow_id, on_time.status, calls) == ("on_time", "ok", 1)
    await gone(js, subjects.stream("tasks"), seq)  # acked: gone from the work queue


async def test_an_agent_waiting_for_a_bus_that_is_not_up_logs_a_line_and_stops_when_told() -> None:
    """No server at the address: each failed attempt is one log line (not nats.py's traceback),
    and a stop while it still waits ends it at once instead of at the shutdown limit."""
    from structlog.testing import capture_logs

    from switchyard.natsd import free_ports

    agent = Agent("doubler", version="1.2.3")

    @agent.task
    async def handle(inp: In, ctx: TaskContext) -> Scored[Out]:
        return Scored(Out(doubled=inp.n * 2), confidence=1.0)

    stop = asyncio.Event()
    port = free_ports(1)
    with capture_logs() as logs:
        serving = asyncio.create_task(agent.serve(stop, AgentConfig(
            nats_url=f"nats://127.0.0.1:{port}")))
        async with asyncio.timeout(10):
            while not any(e["event"] == "agent.bus_error" for e in logs):  # noqa: ASYNC110 - a log line
                await asyncio.sleep(0.05)
        stop.set()
        async with asyncio.timeout(5):
            await serving
    errors = [e for e in logs if e["event"] == "agent.bus_error"]
    assert "Connect call failed" in errors[0]["error"] or "refused" in errors[0]["error"].lower()


async def test_a_start_is_cancelled_with_whoever_waits_for_it() -> None:
    """unless_stopped: a stop cancels a start still running; so does a cancellation of the
    caller (it must not leave the start to finish on its own); a start that fails raises."""
    from switchyard.protocol.bus.tasks import unless_stopped

    started, ended = asyncio.Event(), asyncio.Event()

    async def slow_start() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    stop = asyncio.Event()
    waiting = asyncio.create_task(unless_stopped(stop, slow_start()))
    await started.wait()
    stop.set()
    assert await asyncio.wait_for(waiting, 5) is False and ended.is_set()

    started.clear()
    ended.clear()
    waiting = asyncio.create_task(unless_stopped(asyncio.Event(), slow_start()))
    await started.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert ended.is_set()

    async def failing() -> None:
        raise RuntimeError("no bus")

    with pytest.raises(RuntimeError, match="no bus"):
        await unless_stopped(asyncio.Event(), failing())
    assert await unless_stopped(asyncio.Event(), asyncio.sleep(0)) is True
