"""Find and redact personal data: emails, phone numbers, payment cards (Luhn-checked) and IBANs
(mod-97-checked). Used by triage (sensitivity) and compliance (redaction, disclosure checks)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
_PHONE = re.compile(r"(?<![\w+])(?<!\d[ -])\+?\d[\d ()-]{7,16}\d\b(?![ -]?\d)")


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # email | phone | card | iban
    value: str
    start: int
    end: int


def luhn_valid(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    compact = iban.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def find_pii(text: str) -> list[Finding]:
    """Every finding, without overlaps; cards and IBANs only when their checksum holds."""
    found: list[Finding] = []
    taken: list[tuple[int, int]] = []

    def add(kind: str, m: re.Match[str]) -> None:
        if any(m.start() < e and s < m.end() for s, e in taken):
            return
        found.append(Finding(kind, m.group(0), m.start(), m.end()))
        taken.append((m.start(), m.end()))

    for m in _EMAIL.finditer(text):
        add("email", m)
    for m in _IBAN.finditer(text):
        if iban_valid(m.group(0)):
            add("iban", m)
    for m in _CARD.finditer(text):
        if luhn_valid(m.group(0)):
            add("card", m)
    for m in _PHONE.finditer(text):
        if sum(c.isdigit() for c in m.group(0)) >= 9:
            add("phone", m)
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


def normalize_phone(value: str) -> str:
    return "".join(c for c in value if c.isdigit())
