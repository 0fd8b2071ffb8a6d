"""What every log line goes through before it is written: the ids of the span it was logged in
(so a line finds its trace), and personal data taken out by the detectors the compliance agent
uses (emails, phone numbers, card numbers that pass Luhn, IBANs that pass mod 97)."""

from __future__ import annotations

import re
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
        event[key] = clean(value)
    return event


# what is left of a card number or an address cut short (a subject truncated to 80 characters,
# say), which the detectors no longer see as one: runs of 8 or more digits, and anything with @
_DIGITS = re.compile(r"\d(?:[ -]?\d){7,}")
_AT = re.compile(r"[\w.+-]*@[\w.-]*")


def redact_content(text: str) -> str:
    """Message contents an operator records on spans (``SWITCHYARD_TRACE_CONTENT=1``): personal
    data redacted by the detectors, then any fragment of a number or an address masked too."""
    return _AT.sub("[email]", _DIGITS.sub("[number]", clean(text)))


def clean(value: Any) -> Any:
    """``value`` with personal data redacted in every string, however deep (the compliance
    agent's detectors): what log lines and the console show."""
    if isinstance(value, str):
        found = find_pii(value)
        return redact(value, found) if found else value
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value
