"""The hot-path transport: PullConsumer (pull requests kept topped up, a callback per message) and
Publisher (one ack inbox per process), against a real nats-server."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NoStreamResponseError

from switchyard.protocol.bus.audit import WRONG_LAST_SEQUENCE
from switchyard.protocol.bus.consumer import PullConsumer
from switchyard.protocol.bus.publisher import Publisher
from switchyard.protocol.subjects import Subjects


async def _work_queue(js: JetStreamContext) -> tuple[str, str]:
    name = f"T{uuid.uuid4().hex[:8]}".upper()
    subject = f"{name.lower()}.work"
    await js.add_stream(StreamConfig(name=name, subjects=[subject],
                                     retention=RetentionPolicy.WORK_QUEUE))
    await js.add_consumer(name, ConsumerConfig(durable_name="w", ack_policy=AckPolicy.EXPLICIT,
                                               ack_wait=30))
    return name, subject


async def test_publisher_resolves_acks_and_refusals(nc: Client, js: JetStreamContext) -> None:
    stream, subject = await _work_queue(js)
    pub = await Publisher(nc, timeout=5).start()
    try:
        acks = [await pub.send(subject, b"x%d" % i) for i in range(50)]  # pipelined
        assert [a.seq for a in await asyncio.gather(*acks)] == list(range(1, 51))
        assert all(a.stream == stream for a in await asyncio.gather(*acks))
        dup = await pub.publish(subject, b"d", {"Nats-Msg-Id": "one"})
        again = await pub.publish(subject, b"d", {"Nats-Msg-Id": "one"})
        assert (dup.duplicate, again.duplicate, again.seq) == (False, True, dup.seq)
        # a refused compare-and-set resolves (nats-py's publish_async would hang here)
        with pytest.raises(BadRequestError) as refused:
            await asyncio.wait_for(
                pub.publish(subject, b"late", {"Nats-Expected-Last-Subject-Sequence": "1"}), 5)
        assert refused.value.err_code == WRONG_LAST_SEQUENCE
    finally:
        await pub.stop()
    brief = await Publisher(nc, timeout=0.5).start()
    try:  # no stream at all: sent again until the timeout, then said so (nothing was stored)
        with pytest.raises(NoStreamResponseError):
            await asyncio.wait_for(brief.publish("no.stream.here", b"x"), 5)
        assert brief.resent > 0
    finally:
        await brief.stop()


async def test_publisher_rides_out_a_stream_without_a_leader(
    nc: Client, js: JetStreamContext,
) -> None:
    """A stream electing its leader (a cluster node died) answers a publish with "no responders"
    until it has one. That was an error at once, and the supervisor's handler, the agent's result
    and the tool host's ledger failed with it: now the publish is sent again until it lands."""
    name = f"L{uuid.uuid4().hex[:8]}".upper()
    subject = f"{name.lower()}.x"
    pub = await Publisher(nc, timeout=30).start()
    try:
        pending = asyncio.ensure_future(pub.publish(subject, b"held", {"Nats-Msg-Id": "h1"}))
        async with asyncio.timeout(10):
            while pub.resent == 0:  # noqa: ASYNC110 - no event for "answered 503 and resent"
                await asyncio.sleep(0.02)
        assert not pending.done()
        await js.add_stream(StreamConfig(name=name, subjects=[subject]))  # the leader is back
        ack = await asyncio.wait_for(pending, 10)
        assert (ack.stream, ack.seq, ack.duplicate) == (name, 1, False)
        assert (await js.stream_info(name)).state.messages == 1
    finally:
        await pub.stop()


async def test_pull_consumer_delivers_each_message_once_within_capacity(
    nc: Client, js: JetStreamContext
) -> None:
    stream, subject = await _work_queue(js)
    seen: list[bytes] = []
    busy = peak = 0
    release = asyncio.Event()
    full = asyncio.Event()
    all_seen = asyncio.Event()

    async def handle(msg: Msg) -> None:
        nonlocal busy, peak
        busy += 1
        peak = max(peak, busy)
        if busy == 8:
            full.set()
        seen.append(msg.data)
        if len(seen) == 200:
            all_seen.set()
        await release.wait()  # hold the capacity until the test lets go
        busy -= 1
        await msg.ack()

    consumer = await PullConsumer(nc, stream, "w", handle, capacity=8, heartbeat=0.5).start()
    try:
        for i in range(200):
            await js.publish(subject, b"%d" % i)
        await asyncio.wait_for(full.wait(), 10)  # the first eight arrive and hold every unit
        await nc.flush()  # anything more the server sent has arrived by now
        assert len(seen) == 8 and consumer.busy == 8
        release.set()
        async with asyncio.timeout(20):
            await all_seen.wait()
        assert peak <= 8
        assert sorted(int(x) for x in seen) == list(range(200))  # each once, none lost
    finally:
        release.set()
        await consumer.stop()


async def test_pull_consumer_hands_over_a_lone_message_at_once(
    nc: Client, js: JetStreamContext
) -> None:
    """At low load a message must not wait for a batch to fill (nats-py's fetch with a batch
    above one holds it until a status message comes or the timeout passes)."""
    stream, subject = await _work_queue(js)
    got: asyncio.Queue[Msg] = asyncio.Queue()

    async def handle(msg: Msg) -> None:
        await msg.ack()
        await got.put(msg)

    # requests that would expire only after a minute: a lone message must not wait for that
    consumer = await PullConsumer(nc, stream, "w", handle, capacity=64, expires=60).start()
    try:
        for i in range(3):
            await js.publish(subject, b"%d" % i)
            msg = await asyncio.wait_for(got.get(), 5)
            assert msg.data == b"%d" % i
    finally:
        await consumer.stop()


async def test_journal_leader_reads_equal_direct_reads(js: JetStreamContext, subjects: Subjects) -> None:
    """On a replicated journal the records are read through the stream leader (STREAM.MSG.GET),
    not by direct get: the same records, to the nanosecond and the expected-sequence headers."""
    from switchyard.protocol import WorkflowRequest
    from switchyard.protocol.bus.journal import Journal
    from switchyard.protocol.subjects import JournalKind

    direct, leader = Journal(js, subjects), Journal(js, subjects, direct=False)
    await direct.submit(WorkflowRequest(id="w1", workflow="wf", input={}, submitted_at=1.0))
    first = await direct.first("w1")
    assert first is not None and direct.direct is True  # decided from the stream: R1, direct
    await direct.append("w1", JournalKind.NOTICE, lambda after, prev: WorkflowRequest(
        id="w1", workflow="wf", input={"after": after}, submitted_at=2.0), after=first.seq,
        prev=first.digest)
    assert [r async for r in leader.records("w1")] == [r async for r in direct.records("w1")]
    assert await leader.last("w1") == await direct.last("w1") is not None
    assert await leader.first("nobody") is None and await leader.last("nobody") is None
