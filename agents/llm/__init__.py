"""LLM-backed variants of the reference agents, behind the same roles (``SWITCHYARD_AGENTS=llm``).

Each calls models only through ``ctx.models`` (the step's models, fallbacks, ceilings, cache),
reads its prompt from a versioned file in ``switchyard/agents/prompts`` whose hash every result
records, validates what the model answers against a pydantic model (retried once with the
validation error, never repaired), and makes every tool call through ``ctx.call_tool``: the
task's grant, the policy's approvals, the ledger and the audit trail decide, not the model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from switchyard.agents.context import TaskContext
from switchyard.agents.model.routing import TaskModels
from switchyard.protocol.errors import ConfigError


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    text: str
    sha256: str

    @property
    def ref(self) -> str:
        """What a result records: ``name@version:sha256-prefix``."""
        return f"{self.name}@{self.version}:{self.sha256[:12]}"


@cache
def prompt(name: str) -> Prompt:
    """The prompt file ``prompts/<name>.md``: a YAML front matter (name, version), then the
    text."""
    raw = resources.files("switchyard.agents").joinpath("prompts", f"{name}.md").read_bytes()
    _, front, text = raw.decode().split("---", 2)
    meta = yaml.safe_load(front)
    return Prompt(name=str(meta["name"]), version=str(meta["version"]), text=text.strip(),
                  sha256=hashlib.sha256(raw).hexdigest())


def models_of(ctx: TaskContext, used: Prompt) -> TaskModels:
    """The task's models, recording the prompt; a process with no catalogue is refused."""
    if ctx.models is None:
        raise ConfigError("an LLM agent needs a model catalogue (run it through `switchyard "
                          "agent run` with SWITCHYARD_MODEL_BASE_URL or a catalogue set)")
    ctx.models.prompt = used.ref
    return ctx.models
