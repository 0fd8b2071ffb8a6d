"""``open_ticket`` and ``update_ticket``: the ticket record of a support case."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, Field

from switchyard.protocol.errors import ToolError
from switchyard.tools.builtin.store import DIGITS_AS_LETTERS, SupportStore
from switchyard.tools.contract import CallContext, Tool, tool


class NewTicket(BaseModel):
    customer_id: str | None = None
    subject: str = Field(max_length=200)
    body: str = Field(max_length=20_000)
    category: str = "other"
    severity: str = "normal"


class TicketUpdate(BaseModel):
    ticket_id: str
    status: str = Field(pattern=r"^(open|pending|solved|escalated)$")
    note: str = Field(default="", max_length=4000)


class TicketRef(BaseModel):
    ticket_id: str
    status: str


def ticket_tools(store: SupportStore) -> list[Tool]:
    @tool(name="open_ticket", risk="write", side_effects=True, idempotent=True)
    async def open_ticket(args: NewTicket, ctx: CallContext) -> TicketRef:
        """Open a ticket for a customer's request (once per idempotency key)."""
        ticket_id = store.open_ticket(
            args.customer_id, args.subject, args.body, args.category, args.severity,
            idem_key=ctx.idempotency_key or None,
        )
        return TicketRef(ticket_id=ticket_id, status="open")

    @tool(name="update_ticket", risk="write", side_effects=True)
    async def update_ticket(args: TicketUpdate) -> TicketRef:
        """Change a ticket's status and append a note."""
        if not store.update_ticket(args.ticket_id, args.status, args.note):
            raise ToolError(f"ticket {args.ticket_id} does not exist")
        return TicketRef(ticket_id=args.ticket_id, status=args.status)

    async def open_ticket_dry(args: NewTicket, ctx: CallContext) -> TicketRef:
        return TicketRef(ticket_id=dry_id("T", ctx), status="dry")

    async def update_ticket_dry(args: TicketUpdate) -> TicketRef:
        if store.ticket(args.ticket_id) is None and not args.ticket_id.startswith(DRY_PREFIX):
            raise ToolError(f"ticket {args.ticket_id} does not exist")
        return TicketRef(ticket_id=args.ticket_id, status=args.status)

    return [open_ticket.with_dry(open_ticket_dry), update_ticket.with_dry(update_ticket_dry)]


DRY_PREFIX = "DRY-"


def dry_id(kind: str, ctx: CallContext) -> str:
    """The id a dry run answers with: never one the store would give (``DRY-…``)."""
    digest = hashlib.sha256(ctx.idempotency_key.encode() or ctx.task_id.encode()).hexdigest()[:10]
    return f"{DRY_PREFIX}{kind}-{digest.upper().translate(DIGITS_AS_LETTERS)}"  # as the store's
