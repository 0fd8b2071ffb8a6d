"""Workflow definitions: pydantic models, loaded from YAML.

```yaml
name: support
steps:
  - name: triage
    role: triage
    threshold: 0.55          # a result below this goes to a person
    timeout_s: 20
    retries: 2               # extra attempts after the first
    tools: [kb_search]
    model:                   # which model the agent calls (see ModelPolicy)
      use: small
      rules: [{when: "length(input.text) > `4000`", use: large}]
      fallbacks: [small-b]
      escalate_to: large     # under the threshold: once on this model, then a person
    routes:
      - when: "output.intent == 'legal'"
        to: "@human"         # or "@end", or a step name
        reason: legal requests are handled by a person
```
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from switchyard.protocol.errors import ConfigError
from switchyard.protocol.subjects import check_token
from switchyard.supervisor.routing import compile_expression

HUMAN = "@human"
END = "@end"


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid")
    when: str
    to: str
    reason: str = ""
    detail: str | None = None  # expression whose value is added to the reason
    resume: str | None = None  # after a person approves a @human route; default: the next step


class Limits(BaseModel):
    """Ceilings on model use: tokens (input and output together) and USD; 0 is none."""

    model_config = ConfigDict(extra="forbid")
    tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)

    def __bool__(self) -> bool:
        return bool(self.tokens or self.cost_usd)


class ModelRule(BaseModel):
    """``use`` this model when ``when`` holds (over the same document as routes, plus
    ``scores``: each earlier step's confidence)."""

    model_config = ConfigDict(extra="forbid")
    when: str
    use: str
    reason: str = ""


class ModelPolicy(BaseModel):
    """Which model a step's agent calls. ``use`` unless a rule holds (the first that does);
    on errors, timeouts or an open breaker the ``fallbacks`` in order; a result under the step's
    threshold is tried once on ``escalate_to`` before it goes to a person. ``call`` and
    ``budget`` cap each call and the step (all its attempts)."""

    model_config = ConfigDict(extra="forbid")
    use: str
    rules: list[ModelRule] = []
    fallbacks: list[str] = []
    escalate_to: str | None = None
    call: Limits = Limits()
    budget: Limits = Limits()

    def names(self) -> set[str]:
        return {self.use, *(r.use for r in self.rules), *self.fallbacks,
                *([self.escalate_to] if self.escalate_to else [])}


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    role: str
    input: dict[str, str] | None = None
    # what the task carries besides its input, for the agent's ``ctx.workflow_input`` and
    # ``ctx.outputs``: "input" (the workflow input), names of earlier steps (their outputs), or
    # "*" (both, all of them). Nothing by default: a task's size must not grow with the workflow.
    context: list[str] = []
    when: str | None = None
    threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=2, ge=0, le=20)
    backoff_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    fallback_role: str | None = None
    tools: list[str] = []
    tool_budget: int = Field(default=20, ge=0)
    model: ModelPolicy | None = None
    routes: list[Route] = []

    def context_of(self, workflow_input: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
        """The ``context`` of this step's task."""
        if not self.context:
            return {}
        if "*" in self.context:
            return {"input": workflow_input, "steps": outputs}
        context: dict[str, Any] = {"input": workflow_input} if "input" in self.context else {}
        steps = {name: outputs[name] for name in self.context if name in outputs}
        if steps:
            context["steps"] = steps
        return context


class Workflow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: str = "1"
    description: str = ""
    steps: list[Step] = Field(min_length=1)
    output: str | None = None
    human_deadline_s: float = Field(default=24 * 3600.0, gt=0)
    # which people get this workflow's escalations ("" is the default queue)
    human_queue: str = ""
    # an escalation nobody decided by its deadline: refuse, fail, or put it to people again, to
    # the queue ``re_escalate_to`` names (the same queue if unset)
    on_human_timeout: Literal["reject", "fail", "re_escalate"] = "reject"
    re_escalate_to: str | None = None
    # a task delivered max_deliver times and never acknowledged (it kills its agent, say): after
    # it is dead-lettered, the step goes to its fallback role if it has one, else to a person
    # ("escalate") or the workflow fails ("fail")
    on_dead_letter: Literal["escalate", "fail"] = "escalate"
    # for tool calls held for approval; unset, the policy's defaults apply (then 1 h, reject)
    approval_deadline_s: float | None = Field(default=None, gt=0)
    on_approval_timeout: Literal["reject", "re_escalate"] | None = None
    # ceilings on the whole run's model use, and what happens when it reaches one: a person
    # decides whether it goes on ("escalate"), or it fails ("stop")
    budget: Limits = Limits()
    on_over_budget: Literal["escalate", "stop"] = "escalate"
    # whether a caller of the A2A gateway may answer this workflow's escalations itself (its
    # answer a Decision under the caller's name); off, a person in Switchyard decides
    a2a_answers: bool = False

    def model_names(self) -> set[str]:
        """Every model the definition's steps name."""
        return {n for s in self.steps if s.model for n in s.model.names()}

    @model_validator(mode="after")
    def _check(self) -> Workflow:
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names must be unique: {names}")
        for queue in filter(None, (self.human_queue, self.re_escalate_to)):
            check_token("queue", queue)
        targets = {*names, HUMAN, END}
        for step in self.steps:
            check_token("step", step.name)
            check_token("role", step.role)
            for tool in step.tools:
                check_token("tool", tool)
            unknown = set(step.context) - {*names, "input", "*"}
            if unknown:
                raise ValueError(f"step {step.name}: context names no step {sorted(unknown)}")
            exprs = [*(step.input or {}).values(), *([step.when] if step.when else []),
                     *(r.when for r in (step.model.rules if step.model else []))]
            for model in step.model.names() if step.model else ():
                check_token("model name", model)
            for route in step.routes:
                if route.to not in targets:
                    raise ValueError(f"step {step.name}: route target {route.to!r} is unknown")
                if route.resume is not None and route.resume not in targets - {HUMAN}:
                    raise ValueError(f"step {step.name}: resume target {route.resume!r} is unknown")
                exprs.extend([route.when, *([route.detail] if route.detail else [])])
            for expr in exprs:
                compile_expression(expr)
        if self.output:
            compile_expression(self.output)
        return self

    @functools.cached_property
    def _by_name(self) -> dict[str, tuple[Step, str | None]]:
        """Each step and the one after it in declaration order (None after the last)."""
        names = [s.name for s in self.steps]
        return {s.name: (s, names[i + 1] if i + 1 < len(names) else None)
                for i, s in enumerate(self.steps)}

    def step(self, name: str) -> Step:
        return self._by_name[name][0]

    def digest(self) -> str:
        """What names this definition in a run's state and outcome: a replay under a changed
        definition says so."""
        cached: str | None = self.__dict__.get("_digest")
        if cached is None:
            cached = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]
            self.__dict__["_digest"] = cached
        return cached

    def after(self, name: str) -> str | None:
        """The step after ``name`` in declaration order, or None at the end."""
        return self._by_name[name][1]


def load_workflow(path: str | Path) -> Workflow:
    return parse_workflow(Path(path).read_text(), str(path))


def parse_workflow(text: str, source: str = "<text>") -> Workflow:
    try:
        return Workflow.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError) as exc:
        raise ConfigError(f"workflow {source} is invalid: {exc}") from None


def builtin_workflow(name: str) -> Workflow:
    """A workflow shipped with Switchyard (``support``)."""
    path = resources.files("switchyard.supervisor").joinpath("workflows", f"{name}.yaml")
    if not path.is_file():
        raise ConfigError(f"no built-in workflow named {name!r}")
    return parse_workflow(path.read_text(), f"builtin:{name}")
