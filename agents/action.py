"""Action: looks the customer up, opens a ticket, proposes a refund when one is asked for, and
drafts the reply from the retrieved passages. Every side effect goes through a tool under the
task's grant."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from switchyard.agents import Agent, ErrorCode, TaskContext, ToolError
from switchyard.agents.pii import find_pii
from switchyard.tools.builtin.customers import Customer, CustomerLookup
from switchyard.tools.builtin.refunds import RefundProposal
from switchyard.tools.builtin.tickets import TicketRef

_AMOUNT = re.compile(
    r"(?:(?:€|EUR|USD|\$)\s?(\d+(?:[.,]\d{1,2})?))|(?:(\d+(?:[.,]\d{1,2})?)\s?(?:€|EUR|euros?|USD|dollars?))",
    re.IGNORECASE,
)
_OPENERS = {
    "billing": "Thank you for reaching out about your billing.",
    "technical": "Thank you for reporting this technical problem.",
    "account": "Thank you for contacting us about your account.",
    "legal": "Thank you for your message; it has been passed to the right team.",
    "other": "Thank you for your message.",
}


class Passage(BaseModel):
    article_id: str
    title: str
    snippet: str


class Request(BaseModel):
    text: str = Field(min_length=1, max_length=20_000)
    customer_email: str | None = None
    intent: str = "other"
    severity: str = "normal"
    passages: list[Passage] = []


class Refund(BaseModel):
    refund_id: str
    amount: float
    currency: str
    approved_by: str = ""  # the person who approved it, when the policy asked for one


class Draft(BaseModel):
    reply: str
    customer_id: str | None
    ticket_id: str
    refund: Refund | None = None
    actions: list[str]


def requested_amount(text: str) -> float | None:
    m = _AMOUNT.search(text)
    if not m:
        return None
    return float((m.group(1) or m.group(2)).replace(",", "."))


agent = Agent("action", version="1.0.0", description="drafts replies and acts through tools")


@agent.task
async def act(req: Request, ctx: TaskContext) -> Draft:
    ctx.local_model = "rule-drafter"  # its entry in the model catalogue
    actions: list[str] = []
    customer: Customer | None = None
    if req.customer_email:
        found = await ctx.call_tool("lookup_customer", {"email": req.customer_email},
                                    CustomerLookup)
        customer = found.customer
        actions.append("lookup_customer")
    customer_id = customer.id if customer else None
    ticket = await ctx.call_tool("open_ticket", {
        "customer_id": customer_id, "subject": req.text[:80], "body": req.text,
        "category": req.intent, "severity": req.severity,
    }, TicketRef)
    actions.append("open_ticket")

    lines = [f"Hello {customer.name.split()[0]}," if customer else "Hello,",
             _OPENERS.get(req.intent, _OPENERS["other"])]
    refund = None
    amount = requested_amount(req.text)
    if req.intent == "billing" and customer_id and amount and "refund" in req.text.lower():
        try:  # above the policy's threshold this waits for a person (the runtime escalates)
            proposal = await ctx.call_tool("propose_refund", {
                "customer_id": customer_id, "amount": amount, "currency": "EUR",
                "reason": req.text[:500],
            }, RefundProposal)
        except ToolError as exc:
            if exc.code != ErrorCode.APPROVAL_REJECTED:
                raise
            lines.append("Your refund request was reviewed and could not be approved; our "
                         "billing team will contact you about it.")
        else:
            actions.append("propose_refund")
            # what the tool did, not what was asked: a person may have approved the call with
            # other arguments (the console's edit of a held call)
            refund = Refund(refund_id=proposal.refund_id, amount=proposal.amount,
                            currency=proposal.currency,
                            approved_by=ctx.tool_calls[-1].approved_by)
            lines.append(f"We have issued a refund of {proposal.amount:.2f} "
                         f"{proposal.currency} (reference {refund.refund_id}).")
    # A naive helper: it answers questions about other people it finds in the ticket. The
    # compliance step exists to catch exactly this.
    for finding in find_pii(req.text):
        if finding.kind == "email" and finding.value.lower() != (req.customer_email or "").lower():
            other = await ctx.call_tool("lookup_customer", {"email": finding.value},
                                        CustomerLookup)
            actions.append("lookup_customer")
            if other.customer is not None:
                c = other.customer
                lines.append(f"The contact details you asked for: {c.email}, {c.phone}.")
    for p in req.passages[:2]:
        lines.append(f"{p.title} [{p.article_id}]: {' '.join(p.snippet.split())}")
    lines.append(f"Your ticket number is {ticket.ticket_id}.")
    return Draft(reply="\n".join(lines), customer_id=customer_id, ticket_id=ticket.ticket_id,
                 refund=refund, actions=actions)
