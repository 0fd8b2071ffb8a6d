"""The plug-in API: what an agent author imports.

Handlers raise ``NeedsHuman``, ``Retry`` or ``Reject`` to steer what happens to their task, and may
catch what a tool call raises: ``ToolError`` (its ``code`` is a stable ``ErrorCode``; ``retryable``
says whether trying again may help). Every error Switchyard raises on purpose is a
``SwitchyardError``; the whole family is exported here so no author imports from our internals.
"""

from switchyard.agents.context import JSONObject, JSONValue, TaskContext
from switchyard.agents.model import ModelClient, ModelReply, OpenAICompatibleModel
from switchyard.agents.runtime import Agent, AgentConfig
from switchyard.agents.signals import NeedsHuman, Reject, Retry, Scored
from switchyard.protocol.errors import (
    BudgetExhaustedError,
    ConfigError,
    DecodeError,
    ErrorCode,
    GrantError,
    GrantExpiredError,
    GrantInvalidError,
    GrantMissingError,
    GrantScopeError,
    LimitExceededError,
    MessageTooLargeError,
    ModelBudgetError,
    ModelError,
    ProtocolError,
    SwitchyardError,
    ToolError,
    ToolNotGrantedError,
    UnsupportedVersionError,
)

__all__ = [
    "Agent",
    "AgentConfig",
    "BudgetExhaustedError",
    "ConfigError",
    "DecodeError",
    "ErrorCode",
    "GrantError",
    "GrantExpiredError",
    "GrantInvalidError",
    "GrantMissingError",
    "GrantScopeError",
    "JSONObject",
    "JSONValue",
    "LimitExceededError",
    "MessageTooLargeError",
    "ModelBudgetError",
    "ModelClient",
    "ModelError",
    "ModelReply",
    "NeedsHuman",
    "OpenAICompatibleModel",
    "ProtocolError",
    "Reject",
    "Retry",
    "Scored",
    "SwitchyardError",
    "TaskContext",
    "ToolError",
    "ToolNotGrantedError",
    "UnsupportedVersionError",
]
