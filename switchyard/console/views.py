"""What the pages show, computed from the protocol's messages and the journal's fold: an
escalation as a reviewer reads it, and a run as a timeline. No markup here; the templates escape
everything (ticket text is untrusted)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from switchyard.client import Audit
from switchyard.logs import clean
from switchyard.protocol import Escalation
from switchyard.protocol.events import EventType
from switchyard.protocol.messages import Event
from switchyard.supervisor.engine import SendTask, StepRun
from switchyard.supervisor.workflow import Workflow

KIND_TITLES = {
    "low_confidence": "Low confidence", "approval": "Tool call needs approval",
    "routed": "Routed to a person", "needs_human": "The agent asked for a person",
    "retries_exhausted": "Retries exhausted", "failed": "Step failed",
    "over_budget": "Budget spent",
}


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def anchor(escalation_id: str) -> str:
    """An escalation's item on the page, as an HTML id (and a link's fragment)."""
    return "esc-" + "".join(c if c.isalnum() else "-" for c in escalation_id)


def age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class Item:
    """One escalation as the queue shows it."""

    e: Escalation
    role: str
    title: str
    detail: list[str]
    tool: str = ""
    args: dict[str, Any] | None = None
    threshold: float | None = None
    evidence: list[tuple[str, str]] = field(default_factory=list)  # (label, redacted text)
    editable: str = ""  # the JSON a reviewer edits: the output, or the tool's arguments
    shown_args: str = ""  # the held call's arguments as shown, personal data redacted
    can_edit: bool = True  # an over-budget stop has no output to edit
    claimed_by: str = ""
    waited: str = ""
    deadline_in: str = ""
    overdue: bool = False
    spent_pct: int = 0

    @property
    def dom_id(self) -> str:
        return anchor(self.e.id)


def item(e: Escalation, wf: Workflow | None, claimed_by: str = "",
         now: float | None = None) -> Item:
    now = time.time() if now is None else now
    step = next((s for s in wf.steps if s.name == e.step), None) if wf is not None else None
    it = Item(e=e, role=step.role if step else "", title=KIND_TITLES.get(e.kind, e.kind),
              detail=[clean(e.reason)], claimed_by=claimed_by)
    if e.kind == "low_confidence" and e.confidence is not None:
        it.threshold = step.threshold if step else None
        against = f" against the threshold {it.threshold:.2f}" if it.threshold is not None else ""
        it.detail = [f"confidence {e.confidence:.2f}{against}"]
    approval = (e.output or {}).get("approval") if e.kind == "approval" else None
    if isinstance(approval, dict):
        it.tool = str(approval.get("tool", ""))
        args = approval.get("args")
        it.args = args if isinstance(args, dict) else {}
        it.shown_args = pretty(clean(it.args))
        it.editable = pretty(it.args)
    else:
        it.editable = pretty(e.output or {})
    for key, value in (e.input or {}).items():
        it.evidence.append((f"input: {key}", pretty(clean(value))))
    if e.output and not isinstance(approval, dict):
        it.evidence.append(("draft (the step's output)", pretty(clean(e.output))))
    it.can_edit = e.kind != "over_budget"
    total = max(1.0, e.deadline - e.created_at)
    it.waited, it.deadline_in = age(now - e.created_at), age(e.deadline - now)
    it.overdue = now > e.deadline
    it.spent_pct = int(min(100.0, max(0.0, (now - e.created_at) / total * 100)))
    return it


@dataclass
class Bar:
    """One step attempt on a run's timeline."""

    run: StepRun
    left_pct: float
    width_pct: float
    retry: bool
    fallback: bool
    input: str
    output: str
    cost: str
    tools: list[str]


@dataclass
class Wait:
    """A wait for a person on a run's timeline."""

    step: str
    left_pct: float
    width_pct: float
    took: str
    how: str


@dataclass
class Timeline:
    audit: Audit
    bars: list[Bar]
    waits: list[Wait]
    span_s: float
    status: str
    workflow: str
    reason: str
    output: str
    decisions: list[str]


def timeline(audit: Audit, wf: Workflow | None, events: list[Event]) -> Timeline | None:
    """``audit``'s fold as bars, ``wf`` the definition it ran under."""
    state = audit.replay.state
    if state is None:
        return None
    roles = {s.name: s.role for s in wf.steps} if wf is not None else {}
    inputs: dict[str, dict[str, Any]] = {}
    for step in audit.replay.steps:
        for effect in step.transition.effects:
            if isinstance(effect, SendTask):
                inputs[f"{state.id}:{effect.step}:{effect.attempt}"] = effect.input
    tools: dict[str, list[str]] = {}
    for ev in events:
        for entry in ev.entries:
            d = entry.data
            if entry.type.startswith("tool."):
                extra = d.get("code") or (f"approved by {d['approved_by']}"
                                          if d.get("approved_by") else "")
                tools.setdefault(str(d.get("task", "")), []).append(
                    f"{entry.type.removeprefix('tool.')} {d.get('tool', '')} {extra}".rstrip())
    # the waits for a person, from the fold: escalated at one input, decided at a later one
    decisions: list[str] = []
    waits: list[tuple[str, float, float, str]] = []  # (step, from, to, how it ended)
    open_wait: tuple[str, float] | None = None
    for step in audit.replay.steps:
        at = step.read.record.stamp_ns / 1e9
        for entry in step.transition.entries:
            d = entry.data
            if entry.type == EventType.ESCALATED:
                open_wait = (entry.step, at)
            elif entry.type in (EventType.DECISION, EventType.ESCALATION_EXPIRED):
                how = (f"{d.get('action', '')} by {d.get('reviewer', '')}"
                       if entry.type == EventType.DECISION else "expired")
                if entry.type == EventType.DECISION:
                    decisions.append(how + (f": {d['note']}" if d.get("note") else ""))
                if open_wait is not None:
                    waits.append((open_wait[0], open_wait[1], at, how))
                    open_wait = None
    start = state.created_at
    end = max([state.updated_at, *(r.finished_at or r.dispatched_at for r in state.history)])
    span = max(end - start, 1e-3)
    bars = []
    for r in state.history:
        finished = r.finished_at or end
        task = f"{state.id}:{r.step}:{r.attempt}"
        u = r.usage
        bars.append(Bar(
            run=r, left_pct=(r.dispatched_at - start) / span * 100,
            width_pct=max(0.8, (finished - r.dispatched_at) / span * 100),
            retry=r.attempt > 1, fallback=bool(roles.get(r.step)) and r.role != roles.get(r.step),
            input=pretty(clean(inputs.get(task, {}))),
            output=pretty(clean(state.outputs.get(r.step))) if r.status == "ok" else "",
            cost=(f"{u.input_tokens}+{u.output_tokens} tokens, {u.cost_usd:.6f} USD"
                  if u is not None and (u.input_tokens or u.output_tokens) else ""),
            tools=tools.get(task, [])))
    if open_wait is not None:
        waits.append((open_wait[0], open_wait[1], 0.0, "waiting"))
    lanes = [Wait(step=name, left_pct=(t0 - start) / span * 100,
                  width_pct=max(0.8, ((t1 or end) - t0) / span * 100),
                  took=age((t1 or time.time()) - t0), how=how) for name, t0, t1, how in waits]
    return Timeline(audit=audit, bars=bars, waits=lanes, span_s=span, status=str(state.status),
                    workflow=state.workflow, reason=state.reason,
                    output=pretty(clean(state.output)) if state.output else "",
                    decisions=decisions)
