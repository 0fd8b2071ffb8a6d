"""Journal I/O: appending a record where it must go, and reading a workflow's journal back.

Every writer appends the same way (``Journal.append``): it names the record it follows (for an
agent, the point its task gave it), publishes with ``Nats-Expected-Last-Subject-Sequence`` over
the workflow's journal subjects, and when the server answers that something else came first,
reads the journal's last record and tries again after it. The engine decides what a record that
came late means (a result for an attempt no longer awaited changes nothing), so nothing is
dropped at the door. Reads go straight to the stream, with no consumer: a direct get on a
single-replica stream; on a replicated one, a get the stream leader answers
(``$JS.API.STREAM.MSG.GET``), since a direct get may be served by a follower that has not yet
applied what the leader acknowledged. A fold catching up must see every record before the one it
was given, and an append that lost a race must see the record that won, so a lagging read is not
an option there: it would fold a journal with holes or retry after a stale last record.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.parser import BytesParser
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.api import RawStreamMsg
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError

from switchyard.protocol import codec
from switchyard.protocol.bus.provision import WRONG_LAST_SEQUENCE
from switchyard.protocol.bus.publisher import Publisher
from switchyard.protocol.headers import (
    EXPECTED_LAST_SUBJECT_SEQ,
    EXPECTED_LAST_SUBJECT_SEQ_SUBJECT,
    MSG_ID,
    PROTOCOL,
    TIMESTAMP,
)
from switchyard.protocol.journal import Record, parse_stamp
from switchyard.protocol.messages import PROTOCOL_VERSION, WorkflowRequest
from switchyard.protocol.subjects import JournalKind, Stream, Subjects

MAX_ATTEMPTS = 25
_ACK_TOKENS_V1 = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>


@dataclass(frozen=True)
class Appended:
    seq: int
    message: msgspec.Struct
    duplicate: bool = False


class AlreadyExists(Exception):
    """A submission for a workflow id whose journal has already begun (with other input)."""


def record_of_msg(msg: Msg) -> Record:
    """A journal record as a consumer delivered it."""
    tokens = (msg.reply or "").split(".")
    # the stream sequence and the stored time (ns: nats-py's metadata rounds it to a datetime)
    # are in the ack subject
    v1 = len(tokens) == _ACK_TOKENS_V1
    seq, stamp = (int(tokens[5]), int(tokens[7])) if v1 else (int(tokens[7]), int(tokens[9]))
    headers = msg.headers or {}
    return Record(seq=seq, subject=msg.subject, data=msg.data,
                  stamp_ns=stamp, expected=headers.get(EXPECTED_LAST_SUBJECT_SEQ, ""),
                  expected_subject=headers.get(EXPECTED_LAST_SUBJECT_SEQ_SUBJECT, ""))


def record_of_raw(raw: RawStreamMsg) -> Record:
    """A journal record as a direct get returned it."""
    headers = raw.headers or {}
    return Record(seq=raw.seq or 0, subject=raw.subject or "", data=raw.data or b"",
                  stamp_ns=parse_stamp(headers.get(TIMESTAMP, "1970-01-01T00:00:00Z")),
                  expected=headers.get(EXPECTED_LAST_SUBJECT_SEQ, ""),
                  expected_subject=headers.get(EXPECTED_LAST_SUBJECT_SEQ_SUBJECT, ""))


def record_of_stored(message: dict[str, Any]) -> Record:
    """A journal record as the stream leader's ``STREAM.MSG.GET`` returned it (nats.py's own
    parsing rounds the stored time to microseconds; the fold's clock is in nanoseconds)."""
    headers: dict[str, str] = {}
    if message.get("hdrs"):
        raw = base64.b64decode(message["hdrs"])
        headers = dict(BytesParser().parsebytes(raw[raw.index(b"\r\n") + 2:]).items())
    return Record(seq=int(message["seq"]), subject=message["subject"],
                  data=base64.b64decode(message.get("data") or ""),
                  stamp_ns=parse_stamp(message["time"]),
                  expected=headers.get(EXPECTED_LAST_SUBJECT_SEQ, ""),
                  expected_subject=headers.get(EXPECTED_LAST_SUBJECT_SEQ_SUBJECT, ""))


class Journal:
    """Appends to and reads workflows' journals through a JetStream context (and, for appends,
    the component's pipelined publisher when it has one). ``direct``: read by direct get; by
    default decided from the stream at the first read (only a single-replica stream that allows
    it is read directly, see the module's docstring)."""

    def __init__(
        self, js: JetStreamContext, subjects: Subjects, *, publisher: Publisher | None = None,
        timeout: float = 10.0, direct: bool | None = None,
    ) -> None:
        self.js, self.s = js, subjects
        self._publisher = publisher
        self._stream = subjects.stream(Stream.JOURNAL)
        self.timeout = timeout
        self.conflicts = 0
        self.direct = direct

    async def _reads_direct(self) -> bool:
        if self.direct is None:
            config = (await self.js.stream_info(self._stream)).config
            self.direct = bool(config.allow_direct) and (config.num_replicas or 1) == 1
        return self.direct

    async def _get(self, subject: str, seq: int | None = None) -> Record | None:
        """The last record on ``subject``, or with ``seq`` the first at or after it."""
        try:
            if await self._reads_direct():
                raw = await self.js.get_msg(self._stream, seq=seq, subject=subject,
                                            next=seq is not None, direct=True)
                return record_of_raw(raw)
            request = ({"last_by_subj": subject} if seq is None
                       else {"seq": seq, "next_by_subj": subject})
            # nats.py's request to the JetStream API, with its mapping of errors (404: NotFound)
            answer = await self.js._api_request(
                f"{self.js._prefix}.STREAM.MSG.GET.{self._stream}", msgspec.json.encode(request),
                timeout=self.timeout)
        except NotFoundError:
            return None
        return record_of_stored(answer["message"])

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str]) -> int:
        return (await self._publish_ack(subject, data, headers))[0]

    async def _publish_ack(
        self, subject: str, data: bytes, headers: dict[str, str],
    ) -> tuple[int, bool]:
        """(stream sequence, whether the stream already had this message id)."""
        if self._publisher is not None:
            ack = await self._publisher.publish(subject, data, headers)
            return ack.seq, ack.duplicate
        sent = await self.js.publish(subject, data, timeout=self.timeout, headers=headers)
        return sent.seq, bool(sent.duplicate)

    async def append(
        self, workflow_id: str, kind: JournalKind, make: Callable[[int, str], msgspec.Struct],
        *, after: int, prev: str, role: str = "", msg_id: str = "",
        headers: dict[str, str] | None = None,
    ) -> Appended:
        """Append ``make(after, prev)`` after the record at ``after``; if another record came
        first, after the journal's last record instead. A message id the stream already holds
        is not stored again (``duplicate``: the record at ``seq`` is the earlier one)."""
        subject = self.s.journal_record(workflow_id, kind, role)
        base = {PROTOCOL: PROTOCOL_VERSION, EXPECTED_LAST_SUBJECT_SEQ_SUBJECT:
                self.s.journal(workflow_id), **(headers or {})}
        if msg_id:
            base[MSG_ID] = msg_id
        for _ in range(MAX_ATTEMPTS):
            message = make(after, prev)
            try:
                seq, duplicate = await self._publish_ack(
                    subject, codec.encode(message), {**base, EXPECTED_LAST_SUBJECT_SEQ: str(after)})
            except BadRequestError as exc:
                if exc.err_code not in WRONG_LAST_SEQUENCE:
                    raise
                self.conflicts += 1
                last = await self.last(workflow_id)
                if last is None:
                    raise
                after, prev = last.seq, last.digest
                continue
            return Appended(seq, message, duplicate)
        raise RuntimeError(f"journal {workflow_id}: {MAX_ATTEMPTS} appends overtaken in a row")

    async def append_exactly(
        self, workflow_id: str, kind: JournalKind, message: msgspec.Struct, *, after: int,
        msg_id: str = "",
    ) -> int | None:
        """Append ``message`` only if the record at ``after`` is still the journal's last (the
        supervisor's own inputs: a timer decided on what it had read). None if it was not."""
        headers = {PROTOCOL: PROTOCOL_VERSION, EXPECTED_LAST_SUBJECT_SEQ: str(after),
                   EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: self.s.journal(workflow_id)}
        if msg_id:
            headers[MSG_ID] = msg_id
        try:
            return await self._publish(self.s.journal_record(workflow_id, kind),
                                       codec.encode(message), headers)
        except BadRequestError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise
            self.conflicts += 1
            return None

    async def submit(self, request: WorkflowRequest, headers: dict[str, str] | None = None) -> int:
        """Begin workflow ``request.id``'s journal. Re-sending the same request (a retry after a
        lost ack) is accepted; a different one for an id already begun raises ``AlreadyExists``."""
        data = codec.encode(request)
        subject = self.s.submit(request.id)
        try:
            return await self._publish(subject, data, {
                **(headers or {}), PROTOCOL: PROTOCOL_VERSION, MSG_ID: f"{request.id}:submit",
                EXPECTED_LAST_SUBJECT_SEQ: "0",
                EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: self.s.journal(request.id)})
        except BadRequestError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise
        first = await self.first(request.id)
        if first is not None and first.subject == subject and first.data == data:
            return first.seq
        raise AlreadyExists(f"workflow {request.id} already exists")

    async def last(self, workflow_id: str) -> Record | None:
        return await self._get(self.s.journal(workflow_id))

    async def first(self, workflow_id: str) -> Record | None:
        return await self._next(workflow_id, 1)

    async def _next(self, workflow_id: str, seq: int) -> Record | None:
        return await self._get(self.s.journal(workflow_id), seq)

    async def records(
        self, workflow_id: str, *, after: int = 0, before: int | None = None,
        through: int | None = None,
    ) -> AsyncIterator[Record]:
        """The journal's records with sequence > ``after`` (and < ``before``), in order; with
        ``through``, ending with the record of that sequence (one read fewer than ``before``)."""
        seq = after + 1
        while before is None or seq < before:
            record = await self._next(workflow_id, seq)
            if record is None or (before is not None and record.seq >= before):
                return
            yield record
            if record.seq == through:
                return
            seq = record.seq + 1
