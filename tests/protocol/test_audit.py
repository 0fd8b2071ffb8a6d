"""The audit chain: records of several writers form one unbroken chain per workflow; a changed,
removed or foreign record breaks it where it happened."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.js.client import JetStreamContext

from switchyard.client import SwitchyardClient
from switchyard.protocol import Entry, Event, Subjects, codec
from switchyard.protocol.audit import digest, verify_chain
from switchyard.protocol.bus.audit import AuditLog


def _chain(count: int) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    prev = ""
    for i in range(count):
        data = codec.encode(Event(workflow_id="w", at=float(i), source="s", n=i + 1, prev=prev,
                                  entries=[Entry(type="step.ok", data={"i": i})]))
        out.append((i + 1, data))
        prev = digest(data)
    return out


def test_an_untouched_chain_verifies() -> None:
    v = verify_chain(_chain(4))
    assert v.ok and (v.records, v.entries, v.first_seq, v.last_seq) == (4, 4, 1, 4)
    assert v.head == digest(_chain(4)[-1][1])


def test_a_changed_record_breaks_the_chain_at_the_next_one() -> None:
    records = _chain(4)
    seq, data = records[1]
    records[1] = (seq, data.replace(b'"i":1', b'"i":9'))
    v = verify_chain(records)
    assert not v.ok and len(v.problems) == 1 and v.problems[0].startswith("seq 3:")


def test_a_removed_or_unreadable_record_breaks_the_chain() -> None:
    records = _chain(4)
    assert verify_chain(records[:1] + records[2:]).problems[0].startswith("seq 3:")
    garbled = [*records[:2], (3, b"{not json"), *records[3:]]
    problems = verify_chain(garbled).problems
    assert problems[0].startswith("seq 3: not a readable record")
    assert problems[1].startswith("seq 4:")  # it no longer follows what is stored before it
    assert verify_chain([]).problems == ["no audit records"]


async def test_concurrent_writers_append_one_unbroken_chain(
    nc: Client, js: JetStreamContext, subjects: Subjects,
) -> None:
    writers = [AuditLog(js, subjects, f"writer{i}") for i in range(3)]  # as three processes

    async def write(log: AuditLog) -> None:
        for i in range(20):
            await log.append("w1", [Entry(type="tool.called", data={"i": i})])

    await asyncio.gather(*(write(log) for log in writers))
    assert sum(log.conflicts for log in writers) > 0  # they did race, and JetStream serialised them
    client = SwitchyardClient(nc, subjects)
    v = await client.verify("w1")
    assert v.ok, v.problems
    assert v.records == 60 and v.writers == {"writer0": 20, "writer1": 20, "writer2": 20}


async def test_a_resent_record_is_stored_once(
    nc: Client, js: JetStreamContext, subjects: Subjects,
) -> None:
    log = AuditLog(js, subjects, "supervisor")
    first = await log.append("w2", [Entry(type="step.ok")], msg_id="w2:ev:1", n=1)
    again = await AuditLog(js, subjects, "supervisor").append(  # a restarted writer
        "w2", [Entry(type="step.ok")], msg_id="w2:ev:1", n=1)
    assert again == first
    await log.append("w2", [Entry(type="workflow.completed")], msg_id="w2:ev:2", n=2)
    v = await SwitchyardClient(nc, subjects).verify("w2")
    assert v.ok and v.records == 2


async def test_a_record_appended_around_the_writers_is_caught(
    nc: Client, js: JetStreamContext, subjects: Subjects,
) -> None:
    log = AuditLog(js, subjects, "supervisor")
    for i in range(3):
        await log.append("w3", [Entry(type="step.ok", data={"i": i})])
    forged = Event(workflow_id="w3", at=0.0, source="supervisor", prev="0" * 64,
                   entries=[Entry(type="decision", data={"action": "approve"})])
    await js.publish(subjects.event("w3"), codec.encode(forged))  # no chain, no expected seq
    v = await SwitchyardClient(nc, subjects).verify("w3")
    assert not v.ok and v.problems[0].startswith(f"seq {v.last_seq}:")
