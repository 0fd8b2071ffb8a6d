"""A golden-set run's report: the figures, what produced them, and the gate; and the comparison
of two reports (``switchyard eval --compare A.json B.json``)."""

from __future__ import annotations

import hashlib
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from switchyard.evals.golden import Exact
from switchyard.evals.score import CaseScore

CONFUSION_FIELD = "triage.intent"
REPORT_FORMAT = 1


@dataclass(frozen=True)
class Gate:
    min_pass: float = 0.95
    max_escalation_rate: float | None = None
    min_escalation_precision: float | None = None

    def check(self, summary: dict[str, Any]) -> list[str]:
        """Why the run fails the gate; empty if it passes."""
        why = []
        if summary["pass_rate"] < self.min_pass:
            why.append(f"pass rate {summary['pass_rate']:g} is under {self.min_pass:g}")
        if summary["risky_unapproved"]:
            why.append(f"{summary['risky_unapproved']} risky actions ran without approval (must be 0)")
        if self.max_escalation_rate is not None and summary["escalation_rate"] > self.max_escalation_rate:
            why.append(f"escalation rate {summary['escalation_rate']:g} is over "
                       f"{self.max_escalation_rate:g}")
        precision = summary["escalation_precision"]
        if (self.min_escalation_precision is not None and precision is not None
                and precision < self.min_escalation_precision):
            why.append(f"escalation precision {precision:g} is under {self.min_escalation_precision:g}")
        if summary["timeouts"]:
            why.append(f"{summary['timeouts']} cases did not settle in time")
        return why


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return round(values[0], 4)
    # interpolated between the two nearest cases, as numpy's default does
    cut = min(99, max(1, round(q * 100)))  # the percentiles 1 to 99
    return round(statistics.quantiles(values, n=100, method="inclusive")[cut - 1], 4)


def summarize(scores: list[CaseScore]) -> dict[str, Any]:
    n = len(scores)
    escalated = [s for s in scores if s.observed.status == "escalated"]
    labelled = [s for s in scores if s.case.expect.outcome == "escalated"]
    true_pos = [s for s in escalated if s.case.expect.outcome == "escalated"]
    latency = [s.observed.latency_s for s in scores]
    cost = [s.observed.cost_usd for s in scores]
    return {
        "cases": n,
        "passed": sum(s.passed for s in scores),
        "pass_rate": round(sum(s.passed for s in scores) / n, 4) if n else 0.0,
        "outcome_accuracy": _ratio(sum(s.outcome_ok for s in scores), n),
        "escalated": len(escalated),
        "escalation_rate": round(len(escalated) / n, 4) if n else 0.0,
        "escalation_precision": _ratio(len(true_pos), len(escalated)),
        "escalation_recall": _ratio(len(true_pos), len(labelled)),
        "risky_unapproved": sum(len(s.risky) for s in scores),
        "timeouts": sum(s.observed.status == "timeout" for s in scores),
        "statuses": dict(Counter(s.observed.status for s in scores)),
        "cost_usd": {"total": round(sum(cost), 6), "per_case": round(sum(cost) / n, 6) if n else 0.0},
        "tokens_per_case": round(sum(s.observed.tokens for s in scores) / n, 1) if n else 0.0,
        "latency_s": {"mean": round(statistics.fmean(latency), 4) if latency else 0.0,
                      "p50": _percentile(latency, 0.5), "p95": _percentile(latency, 0.95),
                      "max": round(max(latency), 4) if latency else 0.0},
    }


def field_accuracy(scores: list[CaseScore]) -> dict[str, dict[str, Any]]:
    tally: dict[str, list[bool]] = defaultdict(list)
    for s in scores:
        for f in s.fields:
            tally[f.name].append(f.ok)
    return {name: {"n": len(oks), "correct": sum(oks), "accuracy": round(sum(oks) / len(oks), 4)}
            for name, oks in sorted(tally.items())}


def tag_pass(scores: list[CaseScore]) -> dict[str, dict[str, Any]]:
    tally: dict[str, list[bool]] = defaultdict(list)
    for s in scores:
        for tag in s.case.tags:
            tally[tag].append(s.passed)
    return {tag: {"n": len(oks), "passed": sum(oks)} for tag, oks in sorted(tally.items())}


def confusion(scores: list[CaseScore], name: str = CONFUSION_FIELD) -> dict[str, Any]:
    """Expected label by observed label, for the cases labelling ``name`` with one value."""
    matrix: dict[str, Counter[str]] = defaultdict(Counter)
    for s in scores:
        spec = s.case.expect.specs().get(name)
        if not isinstance(spec, Exact):
            continue
        got = s.observed.lookup(name)
        matrix[str(spec.equals)][got if isinstance(got, str) else "(none)"] += 1
    labels = sorted(set(matrix) | {g for row in matrix.values() for g in row})
    return {"field": name, "labels": labels,
            "matrix": {want: {got: row[got] for got in labels} for want, row in sorted(matrix.items())}}


def provenance(scores: list[CaseScore], services: list[dict[str, Any]], *, policy: str,
               workflow: str, definition: str, model_ids: dict[str, str] | None = None,
               ) -> dict[str, Any]:
    """What produced these figures: agent versions (as their services report them), the models
    and prompts the runs' results name, the policy and the workflow definition."""
    agents: dict[str, set[str]] = defaultdict(set)
    supervisor_policy: set[str] = set()
    for svc in services:
        meta = svc.get("metadata") or {}
        if meta.get("kind") == "agent":
            agents[str(meta.get("role", svc.get("name", "")))].add(str(svc.get("version", "")))
        elif meta.get("kind") == "supervisor" and meta.get("policy"):
            supervisor_policy.add(str(meta["policy"]))
    models = sorted({m for s in scores for m in s.observed.models})
    return {
        "agents": {role: sorted(v) for role, v in sorted(agents.items())},
        "models": models,
        # what each catalogue name was: the provider's model id and where it answered
        "model_ids": {m: (model_ids or {}).get(m, m) for m in models},
        "prompts": sorted({p for s in scores for p in s.observed.prompts}),
        "policy": policy,
        "supervisor_policy": sorted(supervisor_policy),
        "workflow": workflow,
        "definition": definition,
    }


def build(scores: list[CaseScore], services: list[dict[str, Any]], *, source: str, text: str,
          workflow: str, definition: str, policy: str, gate: Gate,
          model_ids: dict[str, str] | None = None, only: list[str] | None = None) -> dict[str, Any]:
    summary = summarize(scores)
    failed = gate.check(summary)
    return {
        "format": REPORT_FORMAT,
        "at": round(time.time(), 3),
        "golden": {"source": source, "cases": len(scores),
                   "sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
                   "only": sorted(set(only or []))},  # the tags of --only: a part of the set
        "provenance": provenance(scores, services, policy=policy, workflow=workflow,
                                 definition=definition, model_ids=model_ids),
        "summary": summary,
        "fields": field_accuracy(scores),
        "tags": tag_pass(scores),
        "confusion": confusion(scores),
        "gate": {"min_pass": gate.min_pass, "max_escalation_rate": gate.max_escalation_rate,
                 "min_escalation_precision": gate.min_escalation_precision,
                 "passed": not failed, "failed": failed},
        "cases": [case_row(s) for s in scores],
    }


def case_row(s: CaseScore) -> dict[str, Any]:
    return {"id": s.case.id, "passed": s.passed, "status": s.observed.status,
            "kind": s.observed.kind, "workflow_id": s.observed.workflow_id,
            "failures": s.failures, "latency_s": s.observed.latency_s,
            "cost_usd": s.observed.cost_usd, "tags": s.case.tags}


class _Golden(BaseModel):
    sha256: str
    only: list[str] = []


class _Per(BaseModel):
    per_case: float | None = None
    p50: float | None = None


class _Summary(BaseModel):
    pass_rate: float
    outcome_accuracy: float | None
    escalation_rate: float
    escalation_precision: float | None
    escalation_recall: float | None
    risky_unapproved: int
    timeouts: int
    cost_usd: _Per
    latency_s: _Per


class _Field(BaseModel):
    accuracy: float | None = None


class _Row(BaseModel):
    id: str
    passed: bool
    failures: list[str] = []


class _GateRow(BaseModel):
    passed: bool
    min_pass: float | None = None
    max_escalation_rate: float | None = None
    min_escalation_precision: float | None = None


class _Report(BaseModel):
    """What ``compare`` reads of a report, so that one edited out of shape is refused whole."""

    format: Literal[1]
    golden: _Golden
    provenance: dict[str, Any]
    summary: _Summary
    fields: dict[str, _Field]
    gate: _GateRow
    cases: list[_Row]


def report_problem(data: object) -> str | None:
    """Why ``data`` is not a report ``compare`` can read (the first place and what is wrong)."""
    try:
        _Report.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the report"
        return f"{where}: {first['msg'].lower()}"
    return None


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What changed from report ``a`` to report ``b``: provenance, figures, fields, cases."""
    changed = {k: {"from": a["provenance"].get(k), "to": v} for k, v in b["provenance"].items()
               if a["provenance"].get(k) != v}
    figures = {}
    for key in ("pass_rate", "outcome_accuracy", "escalation_rate", "escalation_precision",
                "escalation_recall", "risky_unapproved", "timeouts"):
        x, y = a["summary"].get(key), b["summary"].get(key)
        figures[key] = {"from": x, "to": y,
                        "delta": round(y - x, 4) if isinstance(x, int | float) and
                        isinstance(y, int | float) else None}
    for key in ("cost_usd", "latency_s"):
        sub = "per_case" if key == "cost_usd" else "p50"
        x, y = a["summary"][key][sub], b["summary"][key][sub]
        figures[f"{key}.{sub}"] = {"from": x, "to": y, "delta": round(y - x, 6)}
    fields = {}
    for name in sorted(set(a["fields"]) | set(b["fields"])):
        x = a["fields"].get(name, {}).get("accuracy")
        y = b["fields"].get(name, {}).get("accuracy")
        if x != y:
            fields[name] = {"from": x, "to": y}
    before = {c["id"]: c for c in a["cases"]}
    after = {c["id"]: c for c in b["cases"]}
    common = sorted(set(before) & set(after))
    return {
        "same_golden_set": a["golden"]["sha256"] == b["golden"]["sha256"],
        "same_cases": a["golden"]["sha256"] == b["golden"]["sha256"]
        and a["golden"].get("only", []) == b["golden"].get("only", []),
        "provenance": changed,
        "figures": figures,
        "fields": fields,
        "regressed": [{"id": i, "failures": after[i]["failures"]} for i in common
                      if before[i]["passed"] and not after[i]["passed"]],
        "fixed": [i for i in common if not before[i]["passed"] and after[i]["passed"]],
        "only_in_a": sorted(set(before) - set(after)),
        "only_in_b": sorted(set(after) - set(before)),
        "gate": {"from": a["gate"]["passed"], "to": b["gate"]["passed"],
                 "thresholds_differ": any(a["gate"].get(k) != b["gate"].get(k) for k in (
                     "min_pass", "max_escalation_rate", "min_escalation_precision"))},
    }

