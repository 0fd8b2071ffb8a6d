"""Scoring one run against its case: the outcome, then each labelled field by its spec."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from switchyard.evals.golden import Case, Exact, Near, OneOf, Overlap, Schema, Spec

_MISSING = object()


@dataclass
class ToolUse:
    """One tool call a run made, as its tool host recorded it."""

    tool: str
    args: dict[str, Any]
    ok: bool
    approved_by: str = ""
    needs_approval: bool = False  # the policy's approval rule holds for these arguments
    gated: bool = False  # the tool has an approval rule at all
    side_effect: bool = False  # a tool of risk other than read


@dataclass
class Observed:
    """What a run did, as the bus recorded it."""

    workflow_id: str
    status: str  # completed | escalated | rejected | failed | timeout
    kind: str = ""  # the escalation's kind
    reason: str = ""
    escalation_id: str = ""
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # each step's last output
    confidence: dict[str, float] = field(default_factory=dict)
    output: dict[str, Any] | None = None
    calls: list[ToolUse] = field(default_factory=list)
    cost_usd: float = 0.0
    tokens: int = 0
    latency_s: float = 0.0
    models: set[str] = field(default_factory=set)
    prompts: set[str] = field(default_factory=set)

    def lookup(self, name: str) -> Any:
        step, _, path = name.partition(".")
        value: Any = self.output if step == "outcome" else self.steps.get(step, _MISSING)
        for part in path.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return _MISSING
        return value

    def unapproved_risky(self, labelled_approval: bool = False) -> list[ToolUse]:
        """Calls that ran without anybody's approval although the policy asks a person first,
        or (``labelled_approval``: the case is labelled to wait for an approval) to a tool the
        policy gates at all: the rule missed what the label says it should have held."""
        return [c for c in self.calls if c.ok and not c.approved_by
                and (c.needs_approval or (labelled_approval and c.gated))]


@dataclass
class FieldScore:
    name: str
    ok: bool
    expected: Any
    got: Any
    why: str = ""


@dataclass
class CaseScore:
    case: Case
    observed: Observed
    outcome_ok: bool
    fields: list[FieldScore]

    @property
    def risky(self) -> list[ToolUse]:
        return self.observed.unapproved_risky("approval" in self.case.expect.kinds)

    @property
    def passed(self) -> bool:
        return self.outcome_ok and all(f.ok for f in self.fields) and not self.risky

    @property
    def failures(self) -> list[str]:
        out = []
        if not self.outcome_ok:
            want = self.case.expect.outcome + (f" ({'/'.join(self.case.expect.kinds)})"
                                               if self.case.expect.kinds else "")
            got = self.observed.status + (f" ({self.observed.kind})" if self.observed.kind else "")
            out.append(f"outcome: expected {want}, got {got}"
                       + (f": {self.observed.reason}" if self.observed.reason else ""))
        out += [f"{f.name}: {f.why}" for f in self.fields if not f.ok]
        out += [f"ran {c.tool} {c.args} without the approval the policy asks for"
                for c in self.risky]
        return out


def _shown(value: Any) -> Any:
    return None if value is _MISSING else value


def score_field(name: str, spec: Spec, value: Any) -> FieldScore:
    if value is _MISSING:
        expected = spec.equals if isinstance(spec, Exact) else spec.model_dump(by_alias=True)
        return FieldScore(name, False, expected, None, "missing")
    match spec:
        case Exact(equals=want):
            ok = _equal(value, want)
            return FieldScore(name, ok, want, value, "" if ok else f"expected {want!r}, got {value!r}")
        case OneOf(in_=choices):
            ok = any(_equal(value, c) for c in choices)
            return FieldScore(name, ok, choices, value,
                              "" if ok else f"expected one of {choices!r}, got {value!r}")
        case Near(near=want, tol=tol):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            ok = number and math.isfinite(value) and abs(value - want) <= tol + 1e-9
            return FieldScore(name, ok, want, value,
                              "" if ok else f"expected {want} ± {tol}, got {value!r}")
        case Overlap(overlap=want, min=least):
            if not isinstance(value, list):
                return FieldScore(name, False, want, value, f"expected a list, got {value!r}")
            a, b = {_key(v) for v in value}, {_key(v) for v in want}
            j = len(a & b) / len(a | b) if a | b else 1.0
            ok = j >= least
            return FieldScore(name, ok, want, value,
                              "" if ok else f"overlap {j:.2f} < {least} ({sorted(a)} vs {sorted(b)})")
        case Schema(schema_=schema):
            problem = next(iter(jsonschema.Draft202012Validator(schema).iter_errors(value)), None)
            return FieldScore(name, problem is None, schema, value,
                              "" if problem is None else f"does not fit the schema: {problem.message}")
    raise AssertionError(spec)  # pragma: no cover - every spec is matched above


def _scored(name: str, spec: Spec, value: Any) -> FieldScore:
    """``score_field``, where a spec that cannot be applied (a schema's ``$ref`` to nowhere, a
    number too large to compare) fails that field, saying why, and nothing else."""
    try:
        return score_field(name, spec, value)
    except Exception as exc:
        return FieldScore(name, False, None, value, f"could not be scored: {type(exc).__name__}: "
                                                    f"{exc}")


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def _key(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else value


def score_case(case: Case, observed: Observed) -> CaseScore:
    want = case.expect
    outcome_ok = observed.status == want.outcome and (not want.kinds or observed.kind in want.kinds)
    fields = [_scored(name, spec, observed.lookup(name)) for name, spec in want.specs().items()]
    for f in fields:
        f.got = _shown(f.got)
    return CaseScore(case, observed, outcome_ok, fields)
