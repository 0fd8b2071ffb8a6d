"""Tools: the contract, the registry and the host that serves them on the bus."""

from switchyard.tools.contract import CallContext, Tool, tool
from switchyard.tools.host import ToolHost, ToolHostConfig
from switchyard.tools.ledger import ToolLedger
from switchyard.tools.registry import ToolRegistry

__all__ = ["CallContext", "Tool", "ToolHost", "ToolHostConfig", "ToolLedger", "ToolRegistry", "tool"]
