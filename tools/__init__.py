"""Tools: the contract, the registry and the host that serves them on the bus."""

from switchyard.tools.contract import Tool, tool
from switchyard.tools.host import ToolHost, ToolHostConfig
from switchyard.tools.registry import ToolRegistry

__all__ = ["Tool", "ToolHost", "ToolHostConfig", "ToolRegistry", "tool"]
