"""The golden-set format: one JSON object per line, each a labelled case.

```json
{"id": "g001", "input": {"text": "…", "customer_email": "ada@example.com"},
 "expect": {"outcome": "escalated", "escalation": "approval",
            "fields": {"triage.intent": "billing",
                       "triage.severity": {"in": ["normal", "high"]},
                       "action.approval.args.amount": {"near": 1250.0, "tol": 0.01},
                       "triage.flags": {"overlap": ["security_incident"], "min": 1.0},
                       "reviewer.reply": {"schema": {"type": "string", "maxLength": 1500}}}},
 "tags": ["intent:billing", "amount"], "note": "why it is labelled so"}
```

A field is ``<step>.<path>``: the path into that step's last output (a held tool call is the
step's ``approval``), or ``outcome.<path>`` into the run's final output. Its spec is a bare value
(exact; ``{"equals": {...}}`` for an object), ``{"in": [...]}`` (any of), ``{"near": x, "tol": t}``
(numeric tolerance, ``tol`` 0 unless given),
``{"overlap": [...], "min": j}`` (set overlap, Jaccard ≥ j) or ``{"schema": {...}}`` (JSON Schema
only).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from switchyard.protocol.errors import ConfigError
from switchyard.protocol.messages import EscalationKind

Outcome = Literal["completed", "escalated", "rejected", "failed"]
SHIPPED = ("support", "support-2", "support-3", "support-4", "support-5")  # shipped, by name
MAX_CASES = 10_000
MAX_LINE_BYTES = 64 * 1024


class Near(BaseModel):
    model_config = ConfigDict(extra="forbid")
    near: float
    tol: float = Field(default=0.0, ge=0)


class OneOf(BaseModel):
    model_config = ConfigDict(extra="forbid")
    in_: list[Any] = Field(alias="in", min_length=1)


class Overlap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    overlap: list[Any]
    min: float = Field(default=1.0, ge=0, le=1)


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_: dict[str, Any] = Field(alias="schema")

    @field_validator("schema_")
    @classmethod
    def _valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a JSON Schema: {exc.message}") from None
        return value


class Exact(BaseModel):
    model_config = ConfigDict(extra="forbid")
    equals: Any


Spec = Near | OneOf | Overlap | Schema | Exact
_SPECS: dict[str, type[BaseModel]] = {"near": Near, "in": OneOf, "overlap": Overlap,
                                      "schema": Schema, "equals": Exact}
# what a case may say it waits for (protocol.messages.EscalationKind)
KINDS = frozenset(get_args(EscalationKind))


def parse_spec(value: Any) -> Spec:
    """A field's spec from its JSON: an object is a spec (``near``, ``in``, ``overlap``,
    ``schema``, or ``equals`` for an exact object), anything else the exact value expected. So
    a misspelt spec is refused, not taken for an object expected exactly."""
    if not isinstance(value, dict):
        return Exact(equals=value)
    kinds = [k for k in value if k in _SPECS]
    if len(kinds) != 1:
        raise ValueError(f"a field's spec is an object with one of {', '.join(sorted(_SPECS))} "
                         f"(`equals` for an object expected exactly), not {sorted(value)}")
    spec = _SPECS[kinds[0]].model_validate(value)
    assert isinstance(spec, Near | OneOf | Overlap | Schema | Exact)
    return spec


class Expect(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: Outcome
    escalation: str | list[str] | None = None
    fields: dict[str, Any] = {}

    @model_validator(mode="after")
    def _check(self) -> Expect:
        if self.escalation is not None and self.outcome != "escalated":
            raise ValueError("an escalation kind goes with outcome 'escalated'")
        if self.escalation == []:
            raise ValueError("escalation: name the kinds allowed, or leave it out for any")
        unknown = sorted(set(self.kinds) - KINDS)
        if unknown:
            raise ValueError(f"escalation: unknown kind {', '.join(map(repr, unknown))} "
                             f"(kinds: {', '.join(sorted(KINDS))})")
        for name, value in self.fields.items():
            if "." not in name or not all(name.split(".")):
                raise ValueError(f"field {name!r}: a field is named <step>.<path>, e.g. "
                                 "triage.intent (or outcome.<path>)")
            try:
                parse_spec(value)
            except (ValueError, ValidationError) as exc:
                detail = (exc.errors()[0]["msg"] if isinstance(exc, ValidationError)
                          else str(exc))
                raise ValueError(f"field {name!r}: {detail}") from None
        return self

    @property
    def kinds(self) -> list[str]:
        if self.escalation is None:
            return []
        return [self.escalation] if isinstance(self.escalation, str) else list(self.escalation)

    def specs(self) -> dict[str, Spec]:
        return {name: parse_spec(value) for name, value in self.fields.items()}


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")
    input: dict[str, Any]
    expect: Expect
    workflow: str | None = None  # else the set's (``--workflow``)
    tags: list[str] = []
    note: str = ""


def resolve(name_or_path: str) -> Path | str:
    """A shipped set by name (``support``), else a path."""
    if name_or_path in SHIPPED:
        return name_or_path
    return Path(name_or_path)


def read_text(source: Path | str) -> str:
    if isinstance(source, str):
        return resources.files("switchyard").joinpath("data", "golden", f"{source}.jsonl").read_text()
    try:
        data = source.read_bytes()
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{source}:{line}: not UTF-8 text (byte {exc.start})") from None
    except FileNotFoundError:
        raise ConfigError(f"no golden set at {source} (a JSONL file, or a shipped set: "
                          f"{', '.join(SHIPPED)})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the golden set {source}: {exc}") from None


def load(source: Path | str) -> list[Case]:
    """Every case of a golden set (a shipped one by name, else a file); a line that is not one
    is refused, naming the line."""
    source = resolve(source) if isinstance(source, str) else source
    return parse(read_text(source), source)


def parse(text: str, source: Path | str) -> list[Case]:
    """The cases of a golden set's ``text`` (``source`` names it in what is refused)."""
    cases: list[Case] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        if len(line.encode()) > MAX_LINE_BYTES:
            raise ConfigError(f"{where}: a case is at most {MAX_LINE_BYTES} bytes")
        try:
            case = Case.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not JSON ({exc.msg}, column {exc.colno})") from None
        except RecursionError:
            raise ConfigError(f"{where}: nested too deeply") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            at = ".".join(str(p) for p in first["loc"]) or "case"
            raise ConfigError(f"{where}: {at}: {first['msg']}") from None
        if case.id in seen:
            raise ConfigError(f"{where}: case id {case.id!r} is used twice")
        seen.add(case.id)
        cases.append(case)
        if len(cases) > MAX_CASES:
            raise ConfigError(f"{source}: a golden set has at most {MAX_CASES} cases")
    if not cases:
        raise ConfigError(f"{source}: the golden set has no cases")
    return cases
