"""Header names carried on the bus, and small helpers around them."""

from __future__ import annotations

import hashlib
import json
import secrets

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
# the subject filter the expected sequence is checked over (NATS 2.11+): a journal's ``.>``
EXPECTED_LAST_SUBJECT_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
TIMESTAMP = "Nats-Time-Stamp"  # on a directly read message: when it was stored (RFC 3339, ns)
MSG_TTL = "Nats-TTL"
PROTOCOL = "Sy-Protocol"
TRACEPARENT = "traceparent"
DLQ_REASON = "Sy-Dlq-Reason"
DLQ_CODE = "Sy-Dlq-Code"
DLQ_SUBJECT = "Sy-Dlq-Subject"
DLQ_STREAM_SEQ = "Sy-Dlq-Stream-Seq"
DLQ_DELIVERIES = "Sy-Dlq-Deliveries"
DLQ_SOURCE = "Sy-Dlq-Source"
DLQ_HISTORY = "Sy-Dlq-History"  # JSON: the step's attempts so far, for a task given up on


def traceparent_for(workflow_id: str, span_seed: str = "") -> str:
    """A W3C ``traceparent`` whose trace id is derived from the workflow id.

    Every message of one workflow then shares one trace id; the span id is random unless a seed
    (for example a task id) is given.
    """
    trace_id = hashlib.blake2b(workflow_id.encode(), digest_size=16).hexdigest()
    if span_seed:
        span_id = hashlib.blake2b(span_seed.encode(), digest_size=8).hexdigest()
    else:
        span_id = secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01"


def dead_letter_headers(
    *,
    reason: str,
    code: str,
    subject: str,
    source: str,
    stream_seq: int | None = None,
    deliveries: int | None = None,
) -> dict[str, str]:
    """Headers of a dead-letter copy: the body stays the original bytes, unchanged. Header values
    are ASCII: the reason is JSON-string escaped (``header_text``), at most 1000 characters."""
    headers = {
        DLQ_REASON: header_text(reason[:1000]),
        DLQ_CODE: code,
        DLQ_SUBJECT: header_text(subject),
        DLQ_SOURCE: source,
    }
    if stream_seq is not None:
        headers[DLQ_STREAM_SEQ] = str(stream_seq)
    if deliveries is not None:
        headers[DLQ_DELIVERIES] = str(deliveries)
    return headers


def header_text(text: str) -> str:
    """``text`` as an ASCII header value: JSON string escaping without the quotes (non-ASCII as
    ``\\uXXXX``; CR, LF and other control characters escaped, so no header can be injected)."""
    return json.dumps(text)[1:-1]


def read_header_text(value: str) -> str:
    """The inverse of ``header_text``; a value that is not such an escape is returned as it is."""
    try:
        text = json.loads(f'"{value}"')
    except ValueError:
        return value
    return text if isinstance(text, str) else value
