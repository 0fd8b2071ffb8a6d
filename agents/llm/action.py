"""Action by a language model with tools: it looks the customer up, opens the ticket, proposes a
refund, and writes the reply.

The model only asks. A tool it was not offered is refused here (no tool host is asked), and so
is a refund to anyone but the customer who wrote. Every other call goes through
``ctx.call_tool`` under the task's grant, so the tool host refuses what the grant does not name,
holds what the policy wants approved (the step then waits for a person), runs each effect once
(the idempotency key is the call itself), and records it. A refusal goes back to the model as
the call's result. Ids in the draft (customer, ticket, refund) come from what the tools
returned, never from the model's text.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from switchyard.agents import Agent, ErrorCode, TaskContext, ToolError
from switchyard.agents.action import Draft, Refund, Request
from switchyard.agents.llm import models_of, prompt
from switchyard.protocol.grants import call_digest
from switchyard.tools.builtin.customers import CustomerQuery
from switchyard.tools.builtin.refunds import RefundRequest
from switchyard.tools.builtin.tickets import NewTicket

MAX_ROUNDS = 6  # model turns that may ask for tools, before the reply is asked for
TOOLS: dict[str, tuple[str, type[BaseModel]]] = {
    "lookup_customer": ("Find a customer by email.", CustomerQuery),
    "open_ticket": ("Open a ticket for the customer's request.", NewTicket),
    "propose_refund": ("Propose a refund to a customer (paid after review).", RefundRequest),
}


class Reply(BaseModel):
    # no maxLength: a grammar-constrained server (llama.cpp) expands it into one rule per
    # character, and sampling under it crawls; the reviewer checks the length
    reply: str = Field(min_length=1)


def tool_specs() -> list[dict[str, Any]]:
    return [{"type": "function", "function": {
        "name": name, "description": what, "parameters": model.model_json_schema()}}
        for name, (what, model) in TOOLS.items()]


agent = Agent("action", version="1.0.0", description="drafts replies and acts through tools (LLM)")
PROMPT = prompt("action")


@agent.task
async def act(req: Request, ctx: TaskContext) -> Draft:
    models = models_of(ctx, PROMPT)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": PROMPT.text},
        {"role": "user", "content": req.model_dump_json()},
    ]
    found: dict[str, dict[str, Any]] = {}  # tool -> its last successful result
    actions: list[str] = []
    for _ in range(MAX_ROUNDS):
        reply = await models.chat(messages, tools=tool_specs(), max_tokens=300)
        if not reply.tool_calls:
            break
        messages.append(reply.message or {"role": "assistant", "content": reply.text})
        for call in reply.tool_calls:
            requester = ((found.get("lookup_customer") or {}).get("customer") or {}).get("id")
            answer = await _call(ctx, call.name, call.arguments, requester)
            if "error" not in answer:
                found[call.name] = answer
                actions.append(call.name)
            messages.append({"role": "tool", "tool_call_id": call.id,
                             "content": json.dumps(answer)})
    customer = (found.get("lookup_customer") or {}).get("customer") or {}
    if "open_ticket" not in found:  # the workflow needs its ticket, whatever the model did
        ticket = await ctx.call_tool("open_ticket", {
            "customer_id": customer.get("id"), "subject": req.text[:80], "body": req.text,
            "category": req.intent, "severity": req.severity}, key="ticket")
        found["open_ticket"] = dict(ticket)
        actions.append("open_ticket")
    messages.append({"role": "user", "content": "Now write the reply to the customer."})
    text = await models.structured(messages, Reply, max_tokens=800, stream=True)
    proposal = found.get("propose_refund")
    refund = None
    if proposal:
        approved = next((c.approved_by for c in reversed(ctx.tool_calls)
                         if c.tool == "propose_refund" and c.ok), "")
        refund = Refund(refund_id=str(proposal["refund_id"]), amount=float(proposal["amount"]),
                        currency=str(proposal["currency"]), approved_by=approved)
    return Draft(reply=text.reply, customer_id=customer.get("id"),
                 ticket_id=str(found["open_ticket"]["ticket_id"]), refund=refund, actions=actions)


async def _call(ctx: TaskContext, name: str, arguments: str, requester: str | None
                ) -> dict[str, Any]:
    """One call the model asked for; what went wrong is said back to it, except a call that
    needs a person's approval, which stops the task until a person decides. A refund goes only
    to the customer the requester's email found: no text can name another."""
    if name not in TOOLS:  # never offered: no tool host is asked (a secured bus forbids it)
        ctx.log.warning("llm.tool_not_offered", tool=name[:64])
        return {"error": "unknown_tool", "message": f"there is no tool {name[:64]!r} here"}
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        return {"error": "invalid_arguments", "message": "the arguments are not JSON"}
    if not isinstance(args, dict):
        return {"error": "invalid_arguments", "message": "the arguments are not a JSON object"}
    if name == "propose_refund" and args.get("customer_id") != requester:
        ctx.log.warning("llm.refund_not_for_requester")
        return {"error": "not_permitted",
                "message": "a refund may go only to the customer who wrote, once looked up"}
    try:
        return dict(await ctx.call_tool(name, args, key=call_digest(name, args)))
    except ToolError as exc:
        if exc.code == ErrorCode.APPROVAL_REQUIRED:
            raise
        return {"error": str(exc.code), "message": exc.message}
