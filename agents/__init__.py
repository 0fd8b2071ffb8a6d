"""The plug-in API: what an agent author imports."""

from switchyard.agents.context import TaskContext
from switchyard.agents.model import ModelClient, ModelReply, OpenAICompatibleModel
from switchyard.agents.runtime import Agent, AgentConfig
from switchyard.agents.signals import NeedsHuman, Reject, Retry, Scored

__all__ = [
    "Agent",
    "AgentConfig",
    "ModelClient",
    "ModelReply",
    "NeedsHuman",
    "OpenAICompatibleModel",
    "Reject",
    "Retry",
    "Scored",
    "TaskContext",
]
