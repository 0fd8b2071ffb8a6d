"""The supervisor's Prometheus metrics: what its folds decided, by bounded labels only (input
kind, role, status, escalation kind), never a workflow id."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from switchyard.protocol.events import EventType
from switchyard.protocol.journal import Record
from switchyard.supervisor.engine import (
    SendEscalation,
    SendOutcome,
    Transition,
    WorkflowState,
    ended_wait,
)

WAIT_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600)
FINISHED = {EventType.STEP_OK, EventType.STEP_ERROR, EventType.STEP_NEEDS_HUMAN,
            EventType.STEP_TIMED_OUT, EventType.STEP_DEAD_LETTERED}


class SupervisorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.inputs = Counter("switchyard_supervisor_inputs", "Journal records folded", ["kind"],
                              registry=r)
        self.dead = Counter("switchyard_supervisor_dead_letters", "Messages dead-lettered",
                            ["kind"], registry=r)
        self.steps = Counter("switchyard_supervisor_steps", "Step attempts ended, by status",
                             ["role", "status"], registry=r)
        self.step_seconds = Histogram("switchyard_supervisor_step_seconds",
                                      "Step attempt time, dispatch to result", ["role"],
                                      registry=r)
        self.retries = Counter("switchyard_supervisor_step_retries", "Step retries scheduled",
                               ["role"], registry=r)
        self.escalations = Counter("switchyard_supervisor_escalations",
                                   "Escalations to people, by kind", ["kind"], registry=r)
        self.human_wait = Histogram("switchyard_supervisor_human_wait_seconds",
                                    "Time an escalation waited for a decision (or its deadline)",
                                    ["kind"], buckets=WAIT_BUCKETS, registry=r)
        self.waiting = Gauge("switchyard_supervisor_escalations_waiting",
                             "Escalations waiting for a person (the shared index)", registry=r)
        self.workflows = Counter("switchyard_supervisor_workflows", "Runs ended, by status",
                                 ["status"], registry=r)

    def observe(self, before: WorkflowState | None, after: WorkflowState, t: Transition,
                record: Record) -> None:
        """Count what one fold did."""
        for entry in t.entries:
            if entry.type == EventType.STEP_RETRY_SCHEDULED:
                self.retries.labels(after.role).inc()
            elif entry.type in FINISHED:
                run = next((r for r in reversed(after.history) if r.step == entry.step), None)
                if run is not None:
                    self.steps.labels(run.role, run.status).inc()
                    if run.finished_at:
                        self.step_seconds.labels(run.role).observe(
                            max(0.0, run.finished_at - run.dispatched_at))
        for effect in t.effects:
            if isinstance(effect, SendEscalation):
                self.escalations.labels(effect.escalation.kind).inc()
            elif isinstance(effect, SendOutcome):
                self.workflows.labels(effect.outcome.status).inc()
        pending = ended_wait(before, after)
        if pending is not None and pending.created_at:
            self.human_wait.labels(pending.kind).observe(max(0.0, record.at - pending.created_at))
