"""Dead letters as the client reads them: the original bytes and why, from ``sy.dlq.<kind>``."""

from __future__ import annotations

import email.header
import json
from dataclasses import dataclass
from typing import Any

from switchyard.protocol.errors import ConfigError
from switchyard.protocol.headers import (
    DLQ_CODE,
    DLQ_DELIVERIES,
    DLQ_REASON,
    DLQ_SOURCE,
    DLQ_STREAM_SEQ,
    DLQ_SUBJECT,
    read_header_text,
)
from switchyard.protocol.subjects import check_token


@dataclass
class DeadLetter:
    """A message that could not be processed, as ``sy.dlq.<kind>`` holds it: the original bytes,
    and why, in headers."""

    seq: int
    at: float
    kind: str
    subject: str  # where it was originally published
    code: str
    reason: str
    source: str
    stream_seq: str
    deliveries: str
    data: bytes

    @classmethod
    def of(cls, raw: Any) -> DeadLetter:
        h = raw.headers or {}

        def header(name: str) -> str:
            return read_header_text(header_str(h.get(name)))

        return cls(
            seq=raw.seq or 0, at=raw.time.timestamp() if raw.time else 0.0,
            kind=(raw.subject or "").rsplit(".", 1)[-1], subject=header(DLQ_SUBJECT),
            code=header(DLQ_CODE), reason=header(DLQ_REASON), source=header(DLQ_SOURCE),
            stream_seq=header(DLQ_STREAM_SEQ), deliveries=header(DLQ_DELIVERIES),
            data=raw.data or b"",
        )

    def summary(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "kind": self.kind, "subject": self.subject,
                "code": self.code, "reason": self.reason, "source": self.source,
                "stream_seq": self.stream_seq, "deliveries": self.deliveries,
                "bytes": len(self.data)}


def header_str(value: object) -> str:
    """A header value as text, whatever the client library made of it: nats-py parses headers
    with the ``email`` package, which gives a ``Header`` object, not a ``str``, for a value with
    non-ASCII bytes (a reason another client wrote unescaped)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, email.header.Header):
        return "".join(_text(p, c) for p, c in email.header.decode_header(value))
    return str(value)


def _text(part: bytes | str, charset: str | None) -> str:
    if isinstance(part, str):
        return part
    try:  # "unknown-8bit" (raw bytes the parser could not name) is read as UTF-8
        return part.decode(charset if charset and charset != "unknown-8bit" else "utf-8",
                           errors="replace")
    except LookupError:
        return part.decode("utf-8", errors="replace")


def workflow_of(data: bytes) -> str | None:
    """The workflow a dead letter names, if it is JSON naming a valid id (else ``None``: its
    replay is recorded on the unattributed chain, never on a chain it merely resembles)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    value = doc.get("workflow_id") or doc.get("id") or ""
    try:
        return check_token("workflow id", value) if isinstance(value, str) else None
    except ConfigError:
        return None
