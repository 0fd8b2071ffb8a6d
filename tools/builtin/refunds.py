"""``propose_refund``: record a refund proposal (it is paid out only after review)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from switchyard.protocol.errors import ToolError
from switchyard.tools.builtin.store import SupportStore
from switchyard.tools.builtin.tickets import dry_id
from switchyard.tools.contract import CallContext, Tool, tool


class RefundRequest(BaseModel):
    customer_id: str
    amount: float = Field(gt=0, le=1_000_000)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    reason: str = Field(max_length=2000)


class RefundProposal(BaseModel):
    refund_id: str
    amount: float
    currency: str
    status: str


def refund_tool(store: SupportStore) -> Tool:
    @tool(name="propose_refund", risk="write", side_effects=True, idempotent=True)
    async def propose_refund(args: RefundRequest, ctx: CallContext) -> RefundProposal:
        """Record a refund proposal for a customer (once per idempotency key)."""
        if store.customer(customer_id=args.customer_id) is None:
            raise ToolError(f"customer {args.customer_id} does not exist")
        refund_id = store.propose_refund(args.customer_id, args.amount, args.currency, args.reason,
                                         idem_key=ctx.idempotency_key or None)
        return RefundProposal(
            refund_id=refund_id, amount=args.amount, currency=args.currency, status="proposed"
        )

    async def propose_refund_dry(args: RefundRequest, ctx: CallContext) -> RefundProposal:
        if store.customer(customer_id=args.customer_id) is None:
            raise ToolError(f"customer {args.customer_id} does not exist")
        return RefundProposal(refund_id=dry_id("R", ctx), amount=args.amount,
                              currency=args.currency, status="dry")

    return propose_refund.with_dry(propose_refund_dry)
