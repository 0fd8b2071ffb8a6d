"""The model seam: an OpenAI-compatible client (``client``), the catalogue of named models
(``catalogue``), and the routing of one task's calls through the step's models, ceilings and
cache (``routing``)."""

from switchyard.agents.model.catalogue import Catalogue, ModelSpec, Price, load_catalogue
from switchyard.agents.model.client import (
    Message,
    ModelClient,
    ModelReply,
    OpenAICompatibleModel,
    ToolCallRequest,
)
from switchyard.agents.model.routing import ModelRouter, TaskModels

__all__ = [
    "Catalogue",
    "Message",
    "ModelClient",
    "ModelReply",
    "ModelRouter",
    "ModelSpec",
    "OpenAICompatibleModel",
    "Price",
    "TaskModels",
    "ToolCallRequest",
    "load_catalogue",
]
