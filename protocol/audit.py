"""The audit trail: one chain of records per workflow, on ``<prefix>.event.<workflow_id>``.

Each record (``Event``) carries ``prev``, the SHA-256 of the stored bytes of the record before it
on the same subject. Several processes write to one workflow's subject (the supervisor, tool hosts,
agents that dead-letter a task), so every append names the subject sequence it extends
(``Nats-Expected-Last-Subject-Sequence``): JetStream refuses an append that would fork the chain,
and the writer re-reads the tail and tries again. Changing, inserting or deleting any record breaks
the chain at the record after it; ``verify_chain`` finds where. The events stream also denies
deleting messages and purging.

``AuditLog`` acts through a JetStream context it is given (no connection of its own): the
supervisor, the tool host and the agent runtime all write through it, and they may share no other
code. ``verify_chain`` is pure.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError

from switchyard.protocol import codec
from switchyard.protocol.errors import ProtocolError
from switchyard.protocol.headers import MSG_ID
from switchyard.protocol.messages import Entry, Event
from switchyard.protocol.publish import Publisher
from switchyard.protocol.subjects import Subjects, safe_token

EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code when the expected sequence is not the last
MAX_ATTEMPTS = 25


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class AuditLog:
    """Appends records to workflows' chains. Appends to one workflow are serialised in this
    process; across processes JetStream's expected-sequence check serialises them."""

    def __init__(
        self, js: JetStreamContext, subjects: Subjects, source: str, *, cache_size: int = 10_000,
        timeout: float = 10.0, publisher: Publisher | None = None,
    ) -> None:
        self.js, self.s, self.source = js, subjects, source
        self._publisher = publisher
        self.timeout = timeout
        self._stream = subjects.stream("events")
        self._tails: OrderedDict[str, tuple[int, str]] = OrderedDict()  # subject -> (seq, digest)
        self._cache_size = cache_size
        # one lock per subject, kept only while some append holds it
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.conflicts = 0

    async def append(
        self, workflow_id: str, entries: list[Entry], *, msg_id: str = "", n: int = 0,
    ) -> int:
        """Store one record; returns its stream sequence. ``msg_id`` makes a re-sent record a
        duplicate within the stream's window."""
        subject = self.s.event(safe_token(workflow_id))
        lock = self._locks.get(subject)
        if lock is None:
            lock = self._locks[subject] = asyncio.Lock()
        async with lock:
            return await self._append(subject, workflow_id, entries, msg_id, n)

    async def _append(
        self, subject: str, workflow_id: str, entries: list[Entry], msg_id: str, n: int
    ) -> int:
        headers = {MSG_ID: msg_id} if msg_id else {}
        at = time.time()
        for _ in range(MAX_ATTEMPTS):
            tail = self._tails.get(subject)
            if tail is None:
                tail = await self._tail(subject)
            seq, prev = tail
            data = codec.encode(Event(workflow_id=workflow_id, at=at, source=self.source,
                                      entries=entries, n=n, prev=prev))
            append_headers = {**headers, EXPECTED_LAST_SUBJECT_SEQ: str(seq)}
            try:
                ack = await (
                    self._publisher.publish(subject, data, append_headers) if self._publisher
                    else self.js.publish(subject, data, timeout=self.timeout,
                                         headers=append_headers))
            except BadRequestError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
                self.conflicts += 1
                self._tails.pop(subject, None)  # another writer appended: read the tail again
                continue
            if ack.duplicate:
                self._tails.pop(subject, None)  # stored earlier, maybe not last any more
            else:
                self._remember(subject, ack.seq, digest(data))
            return ack.seq
        raise RuntimeError(f"{subject}: {MAX_ATTEMPTS} concurrent appends in a row")

    async def _tail(self, subject: str) -> tuple[int, str]:
        try:
            last = await self.js.get_last_msg(self._stream, subject)
        except NotFoundError:
            return 0, ""
        return last.seq or 0, digest(last.data or b"")

    def _remember(self, subject: str, seq: int, last: str) -> None:
        self._tails[subject] = (seq, last)
        self._tails.move_to_end(subject)
        while len(self._tails) > self._cache_size:
            self._tails.popitem(last=False)

    def assume_new(self, workflow_id: str) -> None:
        """A workflow that has just begun has no records yet: its first append names sequence 0
        without reading the tail first (if it is wrong, the conflict makes it read)."""
        subject = self.s.event(safe_token(workflow_id))
        if subject not in self._tails:
            self._remember(subject, 0, "")

    def forget(self, workflow_id: str) -> None:
        """Drop what this writer knows of a workflow's chain (it has finished)."""
        self._tails.pop(self.s.event(safe_token(workflow_id)), None)


@dataclass
class Verification:
    records: int = 0
    entries: int = 0
    first_seq: int = 0
    last_seq: int = 0
    head: str = ""  # the digest of the last record: what a later record must name as ``prev``
    problems: list[str] = field(default_factory=list)
    writers: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and self.records > 0

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "entries": self.entries,
                "first_seq": self.first_seq, "last_seq": self.last_seq, "head": self.head,
                "writers": self.writers, "problems": self.problems}


def verify_chain(records: Iterable[tuple[int, bytes]]) -> Verification:
    """Check one workflow's records, given as (stream sequence, stored bytes) in stream order."""
    v = Verification()
    prev = ""
    for seq, data in records:
        v.records += 1
        v.first_seq = v.first_seq or seq
        v.last_seq = seq
        try:
            event = codec.decode(data, Event)
        except ProtocolError as exc:
            v.problems.append(f"seq {seq}: not a readable record ({exc.message})")
            prev = digest(data)
            continue
        v.entries += len(event.entries)
        v.writers[event.source] = v.writers.get(event.source, 0) + 1
        if event.prev != prev:
            v.problems.append(
                f"seq {seq}: names {event.prev[:16] or 'no record'} as the record before it, but "
                f"the record before it hashes to {prev[:16] or 'nothing (it is the first)'}: "
                "a record was changed, inserted or removed before it")
        prev = digest(data)
    v.head = prev
    if v.records == 0:
        v.problems.append("no audit records")
    return v
