"""The built-in support tools, backed by one SQLite ``SupportStore``."""

from __future__ import annotations

from pathlib import Path

from switchyard.tools.builtin.customers import lookup_customer_tool
from switchyard.tools.builtin.kb import kb_search_tool
from switchyard.tools.builtin.refunds import refund_tool
from switchyard.tools.builtin.store import SupportStore
from switchyard.tools.builtin.tickets import ticket_tools
from switchyard.tools.registry import ToolRegistry

__all__ = ["SupportStore", "support_registry"]


def support_registry(db_path: str | Path) -> tuple[ToolRegistry, SupportStore]:
    """Every built-in tool over one store at ``db_path``."""
    store = SupportStore(db_path)
    registry = ToolRegistry(
        [kb_search_tool(store), lookup_customer_tool(store), refund_tool(store),
         *ticket_tools(store)]
    )
    return registry, store
