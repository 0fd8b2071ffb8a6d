"""The journal's pure half: what a record is, when it counts as an input, and how records link.

Each workflow has one journal: the records on ``<prefix>.journal.<id>.>``, in stream order. The
first is the submission; every later record names the one before it (``after``: its stream
sequence, ``prev``: the SHA-256 of its stored bytes) and was appended with
``Nats-Expected-Last-Subject-Sequence: <after>`` over the journal's subjects, so the server
refused it unless it really came next. A record that breaks the rule (unreadable, not linked to
the record before it, the wrong kind) is *refused*: it stays where it was stored, since the
stream denies deletes, and it changes nothing, but the record after it must still name it, so
the chain stays whole and a changed, removed or inserted record shows where it happened.

The I/O (appending with the expected sequence, reading a journal back) lives in
``switchyard.protocol.bus.journal``; folding records into a workflow's state is the
supervisor's engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from switchyard.protocol import codec
from switchyard.protocol.audit import digest
from switchyard.protocol.errors import ErrorCode, ProtocolError
from switchyard.protocol.messages import Decision, Notice, Result, TimerFired, WorkflowRequest
from switchyard.protocol.subjects import JournalKind, Subjects, check_token

Input = WorkflowRequest | Result | Decision | TimerFired | Notice

TYPES: dict[str, type[Input]] = {
    JournalKind.SUBMIT: WorkflowRequest,
    JournalKind.RESULT: Result,
    JournalKind.DECISION: Decision,
    JournalKind.TIMER: TimerFired,
    JournalKind.NOTICE: Notice,
}


@dataclass(frozen=True)
class Record:
    """One stored journal message, as the server holds it."""

    seq: int
    subject: str
    data: bytes
    stamp_ns: int  # when the server stored it: the fold's clock, the same live and on replay
    expected: str = ""  # the Nats-Expected-Last-Subject-Sequence it was appended under
    expected_subject: str = ""  # ... and the filter that sequence was checked over

    @property
    def at(self) -> float:
        return self.stamp_ns / 1e9

    @property
    def digest(self) -> str:
        return digest(self.data)


@dataclass(frozen=True)
class Read:
    """A record read against the one before it: an input, or refused with a reason."""

    record: Record
    kind: str
    role: str
    message: Input | None
    refused: str = ""
    code: str = ""

    @property
    def ok(self) -> bool:
        return not self.refused


def parse_stamp(text: str) -> int:
    """An RFC 3339 timestamp with up to nanoseconds (``Nats-Time-Stamp``) as integer ns."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    main, _, rest = text.partition(".")
    frac, zone = "", ""
    if rest:
        for i, ch in enumerate(rest):
            if not ch.isdigit():
                frac, zone = rest[:i], rest[i:]
                break
        else:
            frac = rest
    else:
        for sign in ("+", "-"):
            if sign in main[10:]:
                cut = main.rindex(sign)
                main, zone = main[:cut], main[cut:]
                break
    seconds = int(datetime.fromisoformat(main + (zone or "+00:00")).timestamp())
    return seconds * 1_000_000_000 + int((frac + "000000000")[:9])


def read(
    record: Record, subjects: Subjects, workflow_id: str, prev_seq: int, prev_digest: str,
    *, max_bytes: int = codec.DEFAULT_MAX_BYTES,
) -> Read:
    """Read ``record`` as the input after the record at ``prev_seq`` (0: it should be first)."""
    parsed = subjects.parse_journal(record.subject)
    if parsed is None or parsed[0] != workflow_id:
        return Read(record, "", "", None, f"{record.subject} is not on journal {workflow_id}",
                    ErrorCode.INVALID_INPUT)
    _, kind, role = parsed
    kind_type = TYPES.get(kind)
    if kind_type is None or (kind == JournalKind.RESULT) != bool(role):
        return Read(record, kind, role, None, f"{record.subject}: not a kind of journal record",
                    ErrorCode.INVALID_INPUT)
    try:
        message = codec.decode(record.data, kind_type, max_bytes=max_bytes)
    except ProtocolError as exc:
        return Read(record, kind, role, None, exc.message, exc.code)

    def refuse(reason: str) -> Read:
        return Read(record, kind, role, message, reason, ErrorCode.INVALID_INPUT)

    claimed = message.id if isinstance(message, WorkflowRequest) else message.workflow_id
    if claimed != workflow_id:
        return refuse(f"the record names workflow {claimed!r} but is on journal {workflow_id}")
    if isinstance(message, Result) and message.role != role:
        return refuse(f"a result of role {message.role!r} on the subject of role {role!r}")
    if isinstance(message, WorkflowRequest):
        if prev_seq:
            return refuse(f"a second submission of workflow {workflow_id}")
        if record.expected != "0" or record.expected_subject != subjects.journal(workflow_id):
            return refuse("a submission not appended with expected sequence 0")
        return Read(record, kind, role, message)
    if not prev_seq:
        return refuse("the first record of a journal must be its submission")
    if message.after != prev_seq or message.prev != prev_digest:
        return refuse(f"names seq {message.after} ({message.prev[:12] or 'no digest'}) as the "
                      f"record before it, but that is seq {prev_seq} ({prev_digest[:12]})")
    if record.expected != str(prev_seq) or record.expected_subject != subjects.journal(workflow_id):
        return refuse("not appended with the expected sequence over its journal")
    return Read(record, kind, role, message)


@dataclass
class Chain:
    """A journal read in order: every record, and what was wrong with the links."""

    reads: list[Read] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    head: str = ""
    last_seq: int = 0


def read_all(
    records: Iterable[Record], subjects: Subjects, workflow_id: str,
    *, max_bytes: int = codec.DEFAULT_MAX_BYTES,
) -> Chain:
    """Read one workflow's journal in stream order. A refused record is a problem: well-behaved
    writers never store one (the server refuses their unlinked appends)."""
    check_token("workflow id", workflow_id)
    chain = Chain()
    for record in records:
        r = read(record, subjects, workflow_id, chain.last_seq, chain.head, max_bytes=max_bytes)
        chain.reads.append(r)
        if not r.ok:
            chain.problems.append(f"seq {record.seq} ({r.kind or record.subject}): refused: "
                                  f"{r.refused}")
        chain.last_seq, chain.head = record.seq, record.digest
    if not chain.reads:
        chain.problems.append(f"workflow {workflow_id} has no journal")
    return chain
