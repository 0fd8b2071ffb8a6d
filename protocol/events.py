"""The types of audit entries (``Entry.type``): one name per thing that can happen.

Writers and readers (the engine, the tool host, the agent runtime, ``switchyard trace``, the
client) use these constants, never bare strings.
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    WORKFLOW_SUBMITTED = "workflow.submitted"
    WORKFLOW_COMPLETED = "workflow.completed"
    WORKFLOW_REJECTED = "workflow.rejected"
    WORKFLOW_FAILED = "workflow.failed"
    STEP_DISPATCHED = "step.dispatched"
    STEP_SKIPPED = "step.skipped"
    STEP_ROUTED = "step.routed"
    STEP_OK = "step.ok"
    STEP_ERROR = "step.error"
    STEP_NEEDS_HUMAN = "step.needs_human"
    STEP_RETRY_SCHEDULED = "step.retry_scheduled"
    STEP_FALLBACK = "step.fallback"
    STEP_TIMED_OUT = "step.timed_out"
    STEP_DEAD_LETTERED = "step.dead_lettered"
    STEP_MODEL_ESCALATED = "step.model_escalated"
    WORKFLOW_OVER_BUDGET = "workflow.over_budget"
    ESCALATED = "escalated"
    ESCALATION_EXPIRED = "escalation.expired"
    DECISION = "decision"
    TOOL_CALLED = "tool.called"
    TOOL_REPLAYED = "tool.replayed"
    TOOL_REFUSED = "tool.refused"
    TOOL_APPROVAL_REQUIRED = "tool.approval_required"
    TOOL_APPROVAL_REJECTED = "tool.approval_rejected"
    TASK_DEAD_LETTERED = "task.dead_lettered"
    RESULT_DEAD_LETTERED = "result.dead_lettered"
    SUBMIT_DEAD_LETTERED = "submit.dead_lettered"
    DECISION_DEAD_LETTERED = "decision.dead_lettered"
    TOOL_DEAD_LETTERED = "tool.dead_lettered"
    JOURNAL_DEAD_LETTERED = "journal.dead_lettered"
    INPUT_IGNORED = "input.ignored"
    DLQ_REPLAYED = "dlq.replayed"

    @classmethod
    def dead_lettered(cls, kind: str) -> EventType:
        """``task`` -> ``task.dead_lettered``."""
        return cls(f"{kind}.dead_lettered")

    @classmethod
    def step(cls, status: str) -> EventType:
        """A result's status -> ``step.ok``, ``step.error``, ``step.needs_human``."""
        return cls(f"step.{status}")


FINAL = frozenset({EventType.WORKFLOW_COMPLETED, EventType.WORKFLOW_REJECTED,
                   EventType.WORKFLOW_FAILED})
