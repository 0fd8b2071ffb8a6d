"""Header names carried on the bus, and small helpers around them."""

from __future__ import annotations

import hashlib
import secrets

MSG_ID = "Nats-Msg-Id"
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
    """Headers of a dead-letter copy: the body stays the original bytes, unchanged."""
    headers = {
        DLQ_REASON: reason[:1000],
        DLQ_CODE: code,
        DLQ_SUBJECT: subject,
        DLQ_SOURCE: source,
    }
    if stream_seq is not None:
        headers[DLQ_STREAM_SEQ] = str(stream_seq)
    if deliveries is not None:
        headers[DLQ_DELIVERIES] = str(deliveries)
    return headers
