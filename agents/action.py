"""Action: looks the customer up, opens a ticket, proposes a refund when one is asked for, and
drafts the reply from the retrieved passages. Every side effect goes through a tool under the
task's grant.

The amount of a refund is read in any common format and currency (``amounts``), and proposed in
that currency: the policy decides what needs a person. The reply is made of whole sentences: a
greeting, what was done, what the knowledge base says (quoted whole, with the article cited),
the ticket number and a sign-off."""

from __future__ import annotations

from pydantic import BaseModel, Field

from switchyard.agents import Agent, ErrorCode, TaskContext, ToolError
from switchyard.agents.amounts import asks_refund, requested_refund
from switchyard.agents.pii import find_pii
from switchyard.agents.text import plain_text
from switchyard.tools.builtin.customers import Customer, CustomerLookup
from switchyard.tools.builtin.refunds import RefundProposal
from switchyard.tools.builtin.tickets import TicketRef

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
    passage: str = ""  # whole sentences of the article (older retrieval agents send none)
    score: float = 0.0


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


agent = Agent("action", version="1.0.0", description="drafts replies and acts through tools")


def _cited(p: Passage) -> str:
    text = p.passage or " ".join(p.snippet.replace("…", " ").split())
    if text and text[-1] not in ".!?":
        text += "."
    return f"Our help article \"{p.title}\" ({p.article_id}) says: {text}"


@agent.task
async def act(req: Request, ctx: TaskContext) -> Draft:
    ctx.local_model = "rule-drafter"  # its entry in the model catalogue
    text = plain_text(req.text)
    actions: list[str] = []
    customer: Customer | None = None
    if req.customer_email:
        found = await ctx.call_tool("lookup_customer", {"email": req.customer_email},
                                    CustomerLookup)
        customer = found.customer
        actions.append("lookup_customer")
    customer_id = customer.id if customer else None
    ticket = await ctx.call_tool("open_ticket", {
        "customer_id": customer_id, "subject": text.splitlines()[0][:80] if text else "(empty)",
        "body": req.text, "category": req.intent, "severity": req.severity,
    }, TicketRef)
    actions.append("open_ticket")

    lines = [f"Hello {customer.name.split()[0]}," if customer else "Hello,",
             _OPENERS.get(req.intent, _OPENERS["other"])]
    refund = None
    wanted = requested_refund(text) if req.intent == "billing" else None
    if wanted is not None and customer_id:
        try:  # what the policy holds for a person waits here (the runtime escalates)
            proposal = await ctx.call_tool("propose_refund", {
                "customer_id": customer_id, "amount": wanted.amount, "currency": wanted.currency,
                "reason": text[:500],
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
            lines.append(f"We have issued a refund of {proposal.amount:,.2f} {proposal.currency} "
                         f"(reference {refund.refund_id}); it goes back to your original payment "
                         "method within 5 to 10 business days.")
    elif req.intent == "billing" and asks_refund(text):
        lines.append("Our billing team will look at your refund request and confirm the amount "
                     "with you.")
    # A naive helper: it answers questions about other people it finds in the ticket. The
    # compliance step exists to catch exactly this.
    for finding in find_pii(text):
        if finding.kind == "email" and finding.value.lower() != (req.customer_email or "").lower():
            other = await ctx.call_tool("lookup_customer", {"email": finding.value},
                                        CustomerLookup)
            actions.append("lookup_customer")
            if other.customer is not None:
                c = other.customer
                lines.append(f"The contact details you asked for: {c.email}, {c.phone}.")
    quoted = [p for p in req.passages[:2]
              if p is req.passages[0] or p.score >= 0.5 * req.passages[0].score]
    lines += [_cited(p) for p in quoted]
    lines.append(f"Your ticket number is {ticket.ticket_id}; reply to this message if there is "
                 "anything else we can do.")
    lines.append("Kind regards,\nThe support team")
    return Draft(reply="\n".join(lines), customer_id=customer_id, ticket_id=ticket.ticket_id,
                 refund=refund, actions=actions)
