"""Compliance: redacts personal data from the draft and checks it against policy.

Rules: no refund promised above the approval limit, or in another currency than the limit's,
unless a person approved it; no personal data
of anyone but the customer who wrote in. A failed check sets ``passed`` to false, and the
workflow routes that to a person.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from switchyard.agents import Agent, TaskContext
from switchyard.agents.pii import find_pii, normalize_phone, redact
from switchyard.tools.builtin.customers import CustomerLookup

REFUND_LIMIT_EUR = 100.0


class Review(BaseModel):
    draft: str = Field(min_length=1, max_length=50_000)
    customer_email: str | None = None
    customer_id: str | None = None
    refund_amount: float | None = None
    refund_currency: str | None = None
    refund_approved_by: str | None = None
    refund_limit: float = REFUND_LIMIT_EUR


class Verdict(BaseModel):
    passed: bool
    violations: list[str]
    redacted: str
    pii_found: dict[str, int]


agent = Agent("compliance", version="1.0.0", description="PII redaction and policy checks")


@agent.task
async def check(review: Review, ctx: TaskContext) -> Verdict:
    findings = find_pii(review.draft)
    violations: list[str] = []
    currency = review.refund_currency or "EUR"
    if review.refund_amount is not None and not review.refund_approved_by:
        if currency != "EUR":
            violations.append(f"refund of {review.refund_amount:.2f} {currency} promised without "
                              "approval (a refund in another currency than EUR needs one)")
        elif review.refund_amount > review.refund_limit:
            violations.append(
                f"refund of {review.refund_amount:.2f} EUR promised above the limit of "
                f"{review.refund_limit:.2f} EUR without approval"
            )
    own_email = (review.customer_email or "").lower()
    own_phone = ""
    if review.customer_id:
        me = await ctx.call_tool("lookup_customer", {"customer_id": review.customer_id},
                                 CustomerLookup)
        if me.customer is not None:
            own_email = me.customer.email.lower()
            own_phone = normalize_phone(me.customer.phone or "")
    for f in findings:
        if f.kind == "email" and f.value.lower() != own_email:
            violations.append("discloses an email address that is not the customer's")
        elif f.kind == "phone" and normalize_phone(f.value) != own_phone:
            violations.append("discloses a phone number that is not the customer's")
        elif f.kind in ("card", "iban"):
            violations.append(f"contains a {f.kind} number")
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    return Verdict(passed=not violations, violations=sorted(set(violations)),
                   redacted=redact(review.draft, findings), pii_found=counts)
