"""The audit trail's pure half: what links records into a chain, and how a chain is checked.

Each record (``Event``) carries ``prev``, the SHA-256 (hex) of the exact stored bytes of the record
before it on the same subject ("" for the first). Changing, inserting or deleting any record breaks
the chain at the record after it; ``verify_chain`` finds where. Appending is I/O and lives in
``switchyard.protocol.bus.audit``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from switchyard.protocol import codec
from switchyard.protocol.errors import ProtocolError
from switchyard.protocol.messages import Event


def digest(data: bytes) -> str:
    """What a record's successor names as ``prev``: the SHA-256 of its stored bytes."""
    return hashlib.sha256(data).hexdigest()


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

    def as_dict(self) -> dict[str, object]:
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
