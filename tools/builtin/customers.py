"""``lookup_customer``: find a customer by email or id."""

from __future__ import annotations

from pydantic import BaseModel, Field

from switchyard.tools.builtin.store import SupportStore
from switchyard.tools.contract import Tool, tool


class CustomerQuery(BaseModel):
    email: str | None = Field(default=None, max_length=320)
    customer_id: str | None = Field(default=None, max_length=64)


class Customer(BaseModel):
    id: str
    name: str
    email: str
    phone: str | None
    plan: str


class CustomerLookup(BaseModel):
    found: bool
    customer: Customer | None = None


def lookup_customer_tool(store: SupportStore) -> Tool:
    @tool(name="lookup_customer")
    async def lookup_customer(args: CustomerQuery) -> CustomerLookup:
        """Look up one customer by email or customer id."""
        row = store.customer(email=args.email, customer_id=args.customer_id)
        if row is None:
            return CustomerLookup(found=False)
        return CustomerLookup(found=True, customer=Customer.model_validate(row))

    return lookup_customer
