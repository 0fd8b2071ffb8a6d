"""Find and redact personal data: emails, phone numbers, payment cards and IBANs. Used by triage
(sensitivity) and compliance (redaction, disclosure checks).

Phone numbers are found by ``phonenumbers`` (Google's libphonenumber): any format, international
numbers in any region, national ones in the ``regions`` given (the first is the default); only
numbers valid for their region count. Cards (Luhn) and IBANs (ISO 13616 mod 97, per-country
length and format) are checked by ``python-stdnum``, so a random digit run is not reported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import phonenumbers
from stdnum import iban as _iban
from stdnum import luhn as _luhn

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# candidates only; the checksum libraries decide
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
REGIONS = ("US", "GB", "DE", "FR")


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # email | phone | card | iban
    value: str
    start: int
    end: int


def luhn_valid(number: str) -> bool:
    digits = "".join(c for c in number if c.isdigit())
    return 13 <= len(digits) <= 19 and _luhn.is_valid(digits)


def iban_valid(iban: str) -> bool:
    return bool(_iban.is_valid(iban))


def find_pii(text: str, *, regions: Sequence[str] = REGIONS) -> list[Finding]:
    """Every finding, without overlaps; cards and IBANs only when their checksum holds."""
    found: list[Finding] = []
    taken: list[tuple[int, int]] = []

    def add(kind: str, value: str, start: int, end: int) -> None:
        if any(start < e and s < end for s, e in taken):
            return
        found.append(Finding(kind, value, start, end))
        taken.append((start, end))

    for m in _EMAIL.finditer(text):
        add("email", m.group(0), m.start(), m.end())
    for m in _IBAN.finditer(text):
        if iban_valid(m.group(0)):
            add("iban", m.group(0), m.start(), m.end())
    for m in _CARD.finditer(text):
        if luhn_valid(m.group(0)):
            add("card", m.group(0), m.start(), m.end())
    for region in regions:
        for match in phonenumbers.PhoneNumberMatcher(text, region,
                                                     leniency=phonenumbers.Leniency.VALID):
            add("phone", match.raw_string, match.start, match.end)
    return sorted(found, key=lambda f: f.start)


def redact(text: str, findings: list[Finding] | None = None) -> str:
    findings = find_pii(text) if findings is None else findings
    out, pos = [], 0
    for f in findings:
        out.append(text[pos:f.start])
        out.append(f"[{f.kind}]")
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


def normalize_phone(value: str, region: str = REGIONS[0]) -> str:
    """A phone number in E.164 (``+442079460001``), whatever its format; digits alone if it is
    not a number ``phonenumbers`` can parse."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return "".join(c for c in value if c.isdigit())
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
