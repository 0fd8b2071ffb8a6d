"""What every log line goes through before it is written: the ids of the span it was logged in
(so a line finds its trace), and personal data taken out by the detectors the compliance agent
uses (emails, phone numbers, card numbers that pass Luhn, IBANs that pass mod 97)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from opentelemetry import trace

from switchyard.agents.pii import find_pii, redact


def trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``trace_id`` and ``span_id`` of the current span, when there is one being recorded."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event


def redact_pii(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        event[key] = _clean(value)
    return event


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        found = find_pii(value)
        return redact(value, found) if found else value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
