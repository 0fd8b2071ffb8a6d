"""The tool policy: one file saying which role may use which tool, how often, within which
argument limits, and which calls need a person's approval.

```yaml
tools:
  propose_refund:
    risk: write
    limits: {amount: 1000}          # a call with amount above 1000 is refused
    approval: "args.amount > `100`" # JMESPath over the call's arguments: a person must approve
roles:
  action: {tools: [lookup_customer, propose_refund], calls_per_task: 8}
```

The supervisor mints every grant from it: a step gets the tools it asks for, narrowed to what its
role may use, with the smaller of the two call budgets and the tools' argument limits. A workflow
whose step asks for a tool its role may not use is refused when it is loaded. Roles the file does
not list get no tools.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from switchyard.protocol.errors import ConfigError
from switchyard.protocol.subjects import check_token
from switchyard.supervisor.routing import compile_expression
from switchyard.supervisor.workflow import Step, Workflow


class ToolRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    risk: Literal["read", "write", "critical"] = "read"
    limits: dict[str, float] = {}
    approval: str | None = None


class RoleRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tools: list[str] = []
    calls_per_task: int = Field(default=20, ge=0)


class Grantable(BaseModel):
    """What one task of a step may do: the grant's tools, budget and argument limits."""

    tools: list[str]
    budget: int
    limits: dict[str, dict[str, float]]
    approvals: dict[str, str] = {}


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    tools: dict[str, ToolRule] = {}
    roles: dict[str, RoleRule] = {}
    approval_deadline_s: float = Field(default=3600.0, gt=0)
    on_approval_timeout: Literal["reject", "re_escalate"] = "reject"

    @model_validator(mode="after")
    def _check(self) -> Policy:
        for name, rule in self.tools.items():
            check_token("tool", name)
            if rule.approval:
                compile_expression(rule.approval)
        for role, role_rule in self.roles.items():
            check_token("role", role)
            unknown = sorted(set(role_rule.tools) - set(self.tools))
            if unknown:
                raise ValueError(f"role {role!r} names tools the policy does not define: {unknown}")
        return self

    def digest(self) -> str:
        """Names this policy in a quality report (``switchyard eval``) and the supervisor's
        service metadata."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    def allowed(self, role: str) -> list[str]:
        rule = self.roles.get(role)
        return list(rule.tools) if rule else []

    def grantable(self, step: Step, role: str) -> Grantable:
        """The grant for a task of ``step`` run by ``role`` (the step's role or its fallback)."""
        rule = self.roles.get(role, RoleRule(tools=[], calls_per_task=0))
        tools = [t for t in step.tools if t in rule.tools]
        return Grantable(
            tools=tools,
            budget=min(step.tool_budget, rule.calls_per_task) if tools else 0,
            limits={t: dict(self.tools[t].limits) for t in tools if self.tools[t].limits},
            approvals={t: a for t in tools if (a := self.tools[t].approval)},
        )

    def apply_defaults(self, wf: Workflow) -> Workflow:
        """The workflow with the policy's approval deadline and timeout rule where it sets none."""
        update: dict[str, object] = {}
        if wf.approval_deadline_s is None:
            update["approval_deadline_s"] = self.approval_deadline_s
        if wf.on_approval_timeout is None:
            update["on_approval_timeout"] = self.on_approval_timeout
        return wf.model_copy(update=update) if update else wf

    def check_workflow(self, wf: Workflow) -> None:
        """Refuse a workflow whose steps ask for tools their roles may not use."""
        problems = []
        for step in wf.steps:
            for role in filter(None, (step.role, step.fallback_role)):
                extra = sorted(set(step.tools) - set(self.allowed(role)))
                if extra:
                    problems.append(f"step {step.name!r} gives role {role!r} {extra}")
        if problems:
            raise ConfigError(
                f"workflow {wf.name!r} asks for more than the policy allows: " + "; ".join(problems)
            )

    def matrix(self) -> dict[str, dict[str, str]]:
        """role -> tool -> 'risk' (+ ' approval' when calls can need a person), for allowed ones."""
        out: dict[str, dict[str, str]] = {}
        for role in sorted(self.roles):
            out[role] = {}
            for tool in self.roles[role].tools:
                rule = self.tools[tool]
                out[role][tool] = rule.risk + (" approval" if rule.approval else "")
        return out


def parse_policy(text: str, source: str = "<text>") -> Policy:
    try:
        return Policy.model_validate(yaml.safe_load(text) or {})
    except (ValidationError, yaml.YAMLError) as exc:
        raise ConfigError(f"policy {source} is invalid: {exc}") from None


def load_policy(path_or_name: str | Path) -> Policy:
    """A policy file, or the name of a built-in one (``support``)."""
    text = str(path_or_name)
    if text.endswith((".yaml", ".yml")):
        return parse_policy(Path(text).read_text(), text)
    path = resources.files("switchyard.supervisor").joinpath("policies", f"{text}.yaml")
    if not path.is_file():
        raise ConfigError(f"no built-in policy named {text!r}")
    return parse_policy(path.read_text(), f"builtin:{text}")
