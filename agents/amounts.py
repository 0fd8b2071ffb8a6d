"""Money in a ticket: "$1,250.00", "3.400 €", "GBP 180", "45,50 EUR", "30 euros", "¥12,000".

A mention is a number next to a currency (a symbol, an ISO code or a currency's name, before or
after it); ``price-parser`` reads the number, thousands and decimal separators of either
convention included, and the currency is named by its ISO 4217 code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from price_parser import Price

# what names a currency, lower-cased, to its ISO code
CURRENCIES: dict[str, str] = {
    "€": "EUR", "eur": "EUR", "euro": "EUR", "euros": "EUR", "euro's": "EUR",
    "$": "USD", "us$": "USD", "usd": "USD", "dollar": "USD", "dollars": "USD",
    "£": "GBP", "gbp": "GBP", "pound": "GBP", "pounds": "GBP",
    "chf": "CHF", "fr.": "CHF", "franken": "CHF", "francs": "CHF",
    "¥": "JPY", "jpy": "JPY", "yen": "JPY",
    "sek": "SEK", "nok": "NOK", "dkk": "DKK", "pln": "PLN", "cad": "CAD", "aud": "AUD",
    "c$": "CAD", "a$": "AUD", "brl": "BRL", "r$": "BRL", "inr": "INR", "₹": "INR",
}
_SYMBOL = r"(?:US\$|C\$|A\$|R\$|[€$£¥₹])"
_CODE = r"(?:EUR|USD|GBP|CHF|JPY|SEK|NOK|DKK|PLN|CAD|AUD|BRL|INR)\b"
_WORD = r"(?:euros?|euro's|dollars?|pounds?|yen|francs|franken)\b"
_NUMBER = r"\d{1,3}(?:[.,  ]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"
_MONEY = re.compile(
    rf"(?P<pre>{_SYMBOL}|{_CODE}|Fr\.)\s?(?P<a>{_NUMBER})(?!\d)"
    rf"|(?<![\d.,])(?P<b>{_NUMBER})\s?(?P<post>{_SYMBOL}|{_CODE}|{_WORD})",
    re.IGNORECASE,
)
REFUND_WORDS = re.compile(
    r"\b(?:refund(?!able)|money back|reimburs|pay (?:me )?back|credit (?:it )?back|"
    r"rückerstatt|zurückerstatt|zurücküberweis|erstatt|zurückzahl|geld zurück|"
    r"rembours|"
    r"reembols|devolu|devolv|"
    r"rimbors|restitu|"
    r"terugbetal|terugstort|geld terug|"
    r"estorno|reembolso|devolução)"
    # "ich hätte gern die 250 € zurück", "can I get the GBP 180 back": asked for, not received
    r"|\b(?:hätte|hätten|möchte|möchten|will|wollen|bitte)\b[^.!?]{0,40}(?:€|\bEUR|\beuros?)\s+"
    r"zurück\b"
    r"|\b(?:(?:can|could|may) (?:i|we) (?:please )?|(?:like|want|need|wish) to |please )get "
    r"(?:it|that|this|them|the money|my money|our money|(?:the |my |our )?(?:€|\$|£|[A-Z]{3} ?)?"
    r"\d[\d.,]*(?: ?(?:€|\$|£|[A-Z]{3}|euros?|dollars?|pounds?))?) back\b",
    re.IGNORECASE,
)
# a refund word that asks for none: negated just before it in its sentence, or one already received
_NOT_ASKED = re.compile(
    r"(?:\b(?:no|not|don't|do not|never|nicht|kein\w*|pas de|ne veux pas|no quiero|non voglio|"
    r"geen|wil geen|não quero)[^\w.!?]+(?:\w+[^\w.!?]+){0,3}$)|(?:\b(?:received|got|had|thanks? for|"
    r"erhalten|reçu|recibido|ricevuto|ontvangen|recebi)[^\w.!?]+(?:\w+[^\w.!?]+){0,2}$)",
    re.IGNORECASE)
NEAR = 150  # characters between the refund word and the amount it asks for (two sentences)
MAX_AMOUNT = 1e9  # a longer number is no amount anybody asks back


@dataclass(frozen=True, slots=True)
class Money:
    amount: float
    currency: str  # ISO 4217
    start: int
    end: int


def find_money(text: str) -> list[Money]:
    """Every mention of an amount with its currency, in order."""
    found = []
    for m in _MONEY.finditer(text):
        number = m.group("a") or m.group("b")
        unit = (m.group("pre") or m.group("post") or "").lower()
        currency = CURRENCIES.get(unit)
        price = Price.fromstring(number.replace(" ", " "))
        value = price.amount_float
        if currency is None or value is None or not 0 < value < MAX_AMOUNT:
            continue
        found.append(Money(round(value, 2), currency, m.start(), m.end()))
    return found


def _asks(text: str) -> list[int]:
    """Where the ticket asks for a refund: refund words not negated nor already received."""
    return [m.start() for m in REFUND_WORDS.finditer(text)
            if not _NOT_ASKED.search(text[max(0, m.start() - 40):m.start()])]


def asks_refund(text: str) -> bool:
    return bool(_asks(text))


def refund_amounts(text: str) -> list[Money]:
    """The distinct amounts within ``NEAR`` characters of a word asking for a refund (none if
    the ticket asks for none)."""
    asks = _asks(text)
    seen: dict[tuple[float, str], Money] = {}
    for m in find_money(text):
        if any(abs(m.start - a) <= NEAR or abs(m.end - a) <= NEAR for a in asks):
            seen.setdefault((m.amount, m.currency), m)
    return list(seen.values())


def requested_refund(text: str) -> Money | None:
    """The amount a refund is asked for, if the ticket names exactly one: with two or more, which
    one is meant is for a person to settle, not a rule."""
    amounts = refund_amounts(text)
    return amounts[0] if len(amounts) == 1 else None
