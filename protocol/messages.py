"""The wire messages: JSON objects, encoded and decoded only through ``codec``.

Every message carries ``protocol`` (``"<major>.<minor>"``). A reader rejects a major version it
does not know. Payloads written by users (a task's ``input``, a result's ``output``, a tool's
``args``) are plain JSON objects here; their schemas belong to the agent or tool that declares them.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

PROTOCOL_VERSION = "1.0"

JSONObject = dict[str, Any]


class _Message(msgspec.Struct, kw_only=True, omit_defaults=False, forbid_unknown_fields=False):
    protocol: str = PROTOCOL_VERSION


class WorkflowRequest(_Message, kw_only=True):
    """A client asks for one run of a workflow. ``id`` becomes the workflow id."""

    id: str
    workflow: str
    input: JSONObject
    submitted_at: float
    metadata: dict[str, str] = {}


class Task(_Message, kw_only=True):
    """One step of one workflow, for an agent role. ``id`` is ``<workflow>:<step>:<attempt>``."""

    id: str
    workflow_id: str
    workflow: str
    step: str
    role: str
    attempt: int
    input: JSONObject
    context: JSONObject = {}
    grant: str = ""
    deadline: float = 0.0


class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    model: str = ""


class ErrorInfo(msgspec.Struct, kw_only=True):
    code: str
    message: str
    retryable: bool = False


ResultStatus = Literal["ok", "error", "needs_human"]


class Result(_Message, kw_only=True):
    """An agent's answer to one task."""

    task_id: str
    workflow_id: str
    step: str
    role: str
    attempt: int
    status: ResultStatus
    output: JSONObject | None = None
    confidence: float = 1.0
    reason: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)
    error: ErrorInfo | None = None
    agent: str = ""
    duration_ms: float = 0.0


class ToolCall(_Message, kw_only=True):
    tool: str
    args: JSONObject
    grant: str
    task_id: str
    workflow_id: str
    idempotency_key: str = ""


class ToolResult(_Message, kw_only=True):
    ok: bool
    result: JSONObject | None = None
    error: ErrorInfo | None = None
    approved_by: str = ""  # set when the call needed and had a person's approval


EscalationKind = Literal[
    "low_confidence", "routed", "needs_human", "retries_exhausted", "failed", "approval"
]


class Escalation(_Message, kw_only=True):
    """Work waiting for a person. The workflow is paused until a ``Decision`` names ``id``."""

    id: str
    workflow_id: str
    workflow: str
    step: str
    kind: EscalationKind
    reason: str
    output: JSONObject | None = None
    confidence: float | None = None
    input: JSONObject = {}
    created_at: float
    deadline: float
    queue: str = ""  # which people: "" is the default queue, else a named one


DecisionAction = Literal["approve", "reject", "edit"]


class Decision(_Message, kw_only=True):
    """A person's answer to an escalation. ``edit`` approves with ``output`` replacing the step's."""

    escalation_id: str
    workflow_id: str
    action: DecisionAction
    reviewer: str
    output: JSONObject | None = None
    note: str = ""
    decided_at: float


class Entry(msgspec.Struct, kw_only=True):
    """One thing that happened: ``step.dispatched``, ``tool.called``, ``workflow.completed``..."""

    type: str
    step: str = ""
    data: JSONObject = {}


class Event(_Message, kw_only=True):
    """One audit record on ``<prefix>.event.<workflow_id>``: what one writer did in one go (the
    supervisor: one transition; a tool host: one call), as one or more entries.

    ``prev`` is the SHA-256 (hex) of the stored bytes of the record before it on the same subject
    ("" for the first), so the records of a workflow form a tamper-evident chain. ``n`` is the
    writer's own count for the workflow (the supervisor's transition number), 0 where it has none.
    """

    workflow_id: str
    at: float
    source: str
    entries: list[Entry]
    n: int = 0
    prev: str = ""


OutcomeStatus = Literal["completed", "rejected", "failed"]


class StepTiming(msgspec.Struct, kw_only=True):
    step: str
    role: str
    attempt: int
    status: str
    duration_ms: float
    confidence: float | None = None


class Outcome(_Message, kw_only=True):
    """The final word on a workflow, kept per workflow for the submitter."""

    workflow_id: str
    workflow: str
    status: OutcomeStatus
    output: JSONObject | None = None
    reason: str = ""
    steps: list[StepTiming] = []
    escalations: int = 0
    started_at: float
    finished_at: float


MESSAGE_TYPES: tuple[type[msgspec.Struct], ...] = (
    WorkflowRequest,
    Task,
    Result,
    ToolCall,
    ToolResult,
    Escalation,
    Decision,
    Event,
    Outcome,
)
