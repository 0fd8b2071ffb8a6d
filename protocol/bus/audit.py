"""AuditLog: appends records to the audit chains, one per workflow on ``<prefix>.event.<id>``.

Each record (``Event``) carries ``prev``, the SHA-256 of the stored bytes of the record before it
on the same subject. Several processes write to one workflow's subject (the supervisor, tool hosts,
agents that dead-letter a task), so every append names the subject sequence it extends
(``Nats-Expected-Last-Subject-Sequence``): JetStream refuses an append that would fork the chain,
and the writer re-reads the tail and tries again. The events stream denies deleting messages and
purging; ``switchyard.protocol.audit.verify_chain`` checks a chain.

``AuditLog`` acts through the connection's JetStream context and publisher it is given (no
connection of its own): the supervisor, the tool host and the agent runtime all write through it.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict

from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError

from switchyard.protocol import codec
from switchyard.protocol.audit import digest
from switchyard.protocol.bus.publisher import Publisher
from switchyard.protocol.headers import EXPECTED_LAST_SUBJECT_SEQ, MSG_ID
from switchyard.protocol.messages import Entry, Event
from switchyard.protocol.subjects import Subjects

WRONG_LAST_SEQUENCE = 10071  # JetStream's error code when the expected sequence is not the last
MAX_ATTEMPTS = 25


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
        self.cache_size = cache_size
        # one lock per subject, kept only while some append holds it
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.conflicts = 0

    async def append(
        self, workflow_id: str | None, entries: list[Entry], *, msg_id: str = "", n: int = 0,
    ) -> int:
        """Store one record on ``workflow_id``'s chain, or with ``None`` on the chain of records
        that belong to no workflow (``Subjects.unattributed``); returns its stream sequence.
        ``msg_id`` makes a re-sent record a duplicate within the stream's window. An id that is
        not a valid subject token raises ``ConfigError``: ids are checked, never rewritten."""
        subject = self.s.event(workflow_id) if workflow_id is not None else self.s.unattributed
        lock = self._locks.get(subject)
        if lock is None:
            lock = self._locks[subject] = asyncio.Lock()
        async with lock:
            return await self._append(subject, workflow_id, entries, msg_id, n)

    async def _append(
        self, subject: str, workflow_id: str | None, entries: list[Entry], msg_id: str, n: int
    ) -> int:
        headers = {MSG_ID: msg_id} if msg_id else {}
        at = time.time()
        for _ in range(MAX_ATTEMPTS):
            tail = self._tails.get(subject)
            if tail is None:
                tail = await self._tail(subject)
            seq, prev = tail
            data = codec.encode(Event(workflow_id=workflow_id or "", at=at, source=self.source,
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
        while len(self._tails) > self.cache_size:
            self._tails.popitem(last=False)
