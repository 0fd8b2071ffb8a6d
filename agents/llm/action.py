"""Action by a language model: the model decides whether a refund is due and writes the reply;
what must not depend on a model is code.

- The customer is looked up by the email the ticket came with, and the ticket is opened, in
  code: the same calls with the same idempotency keys on every attempt, so a retried task never
  opens a second ticket, and no text can make it look up someone else.
- The model is offered one tool, ``propose_refund``. What it asks for goes through
  ``ctx.call_tool`` under the task's grant (the tool host refuses what the grant does not name,
  enforces the policy's limits, holds what the policy wants approved, runs each effect once, and
  records it), after two checks here: a refund goes only to the customer who wrote, and for the
  amount the ticket asks for when it names one. Its arguments are built here from what the model
  chose (the amount) and the request, so the same decision is the same call on a re-run after a
  person approved it. A tool it was not offered is refused without asking any tool host.
- A refusal goes back to the model as the call's result. Ids in the draft (customer, ticket,
  refund) come from what the tools returned, never from the model's text.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from switchyard.agents import Agent, ErrorCode, JSONObject, TaskContext, ToolError
from switchyard.agents.action import Draft, Refund, Request
from switchyard.agents.amounts import refund_amounts
from switchyard.agents.llm import models_of, prompt
from switchyard.agents.text import plain_text
from switchyard.protocol.grants import call_digest
from switchyard.tools.builtin.customers import CustomerLookup
from switchyard.tools.builtin.tickets import TicketRef

MAX_ROUNDS = 4  # model turns that may ask for tools, before the reply is asked for


class RefundAsk(BaseModel):
    """What the model may ask of ``propose_refund``: the amount, in the currency the customer
    named (EUR if none)."""

    amount: float = Field(gt=0)


class Reply(BaseModel):
    # no maxLength: a grammar-constrained server (llama.cpp) expands it into one rule per
    # character, and sampling under it crawls; the reviewer checks the length
    reply: str = Field(min_length=1)


TOOLS = [{"type": "function", "function": {
    "name": "propose_refund",
    "description": "Propose a refund in EUR to the customer who wrote (paid after review).",
    "parameters": RefundAsk.model_json_schema()}}]

agent = Agent("action", version="1.0.0", description="drafts replies and acts through tools (LLM)")
PROMPT = prompt("action")


@agent.task
async def act(req: Request, ctx: TaskContext) -> Draft:
    models = models_of(ctx, PROMPT)
    customer = None
    if req.customer_email:
        customer = (await ctx.call_tool("lookup_customer", {"email": req.customer_email},
                                        CustomerLookup, key="requester")).customer
    customer_id = customer.id if customer else None
    ticket = await ctx.call_tool("open_ticket", {
        "customer_id": customer_id, "subject": req.text[:80], "body": req.text,
        "category": req.intent, "severity": req.severity}, TicketRef, key="ticket")
    actions = [*(["lookup_customer"] if req.customer_email else []), "open_ticket"]
    facts = {"request": req.model_dump(mode="json", exclude={"customer_email"}),
             "customer": {"name": customer.name} if customer else None,
             "ticket_id": ticket.ticket_id}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": PROMPT.text},
        {"role": "user", "content": json.dumps(facts)},
    ]
    refund: Refund | None = None
    for _ in range(MAX_ROUNDS):
        reply = await models.chat(messages, tools=TOOLS, max_tokens=200)
        if not reply.tool_calls:
            break
        messages.append(reply.message or {"role": "assistant", "content": reply.text})
        for call in reply.tool_calls:
            answer = await _propose(ctx, req, customer_id, call.name, call.arguments)
            if "refund_id" in answer:
                refund = Refund(refund_id=str(answer["refund_id"]),
                                amount=float(answer["amount"]), currency=str(answer["currency"]),
                                approved_by=ctx.tool_calls[-1].approved_by)
                actions.append("propose_refund")
            messages.append({"role": "tool", "tool_call_id": call.id,
                             "content": json.dumps(answer)})
    messages.append({"role": "user", "content": "Now write the reply to the customer."})
    text = await models.structured(messages, Reply, max_tokens=800, stream=True)
    return Draft(reply=text.reply, customer_id=customer_id, ticket_id=ticket.ticket_id,
                 refund=refund, actions=actions)


async def _propose(ctx: TaskContext, req: Request, customer_id: str | None, name: str,
                   arguments: str) -> dict[str, Any]:
    """One call the model asked for; what went wrong is said back to it, except a call that
    needs a person's approval, which stops the task until a person decides."""
    if name != "propose_refund":  # never offered: no tool host is asked
        ctx.log.warning("llm.tool_not_offered", tool=name[:64])
        return {"error": "unknown_tool", "message": f"there is no tool {name[:64]!r} here"}
    try:
        ask = RefundAsk.model_validate_json(arguments or "{}")
    except ValueError:
        return {"error": "invalid_arguments", "message": "give the amount, a positive number"}
    if customer_id is None:
        return {"error": "not_permitted", "message": "nobody was looked up to refund"}
    amounts = refund_amounts(plain_text(req.text))  # in the currency the customer named
    if len(amounts) > 1:
        return {"error": "not_permitted", "message": "the ticket names several amounts; a "
                "person settles which one is meant"}
    stated = amounts[0] if amounts else None
    if stated is not None and abs(ask.amount - stated.amount) > 0.005:
        return {"error": "not_permitted", "message": f"the customer asked for "
                f"{stated.amount:.2f} {stated.currency}; a refund is that or none"}
    args: JSONObject = {"customer_id": customer_id, "amount": round(ask.amount, 2),
                        "currency": stated.currency if stated else "EUR",
                        "reason": req.text[:500]}
    try:
        return dict(await ctx.call_tool("propose_refund", args, key=call_digest(
            "propose_refund", dict(args))))
    except ToolError as exc:
        if exc.code == ErrorCode.APPROVAL_REQUIRED:
            raise
        return {"error": str(exc.code), "message": exc.message}
