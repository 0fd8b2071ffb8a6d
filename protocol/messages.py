"""The wire messages: JSON objects, encoded and decoded only through ``codec``.

Every message carries ``protocol`` (``"<major>.<minor>"``). A reader rejects a major version it
does not know. Payloads written by users (a task's ``input``, a result's ``output``, a tool's
``args``) are plain JSON objects here; their schemas belong to the agent or tool that declares them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

PROTOCOL_VERSION = "2.0"

JSONObject = dict[str, Any]


class _Message(msgspec.Struct, kw_only=True, omit_defaults=False, forbid_unknown_fields=False):
    protocol: str = PROTOCOL_VERSION


class _Linked(_Message, kw_only=True):
    """A journal record after the first: ``after`` is the stream sequence of the record it
    follows on its workflow's journal and ``prev`` the SHA-256 (hex) of that record's stored
    bytes. The writer appends with ``Nats-Expected-Last-Subject-Sequence: <after>`` over the
    journal's subjects, so JetStream refuses an append that would not follow ``after``."""

    after: int = 0
    prev: str = ""


class WorkflowRequest(_Message, kw_only=True):
    """A client asks for one run of a workflow: the first record of its journal, appended with
    expected sequence 0, so an id can be started only once. ``id`` becomes the workflow id."""

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
    # where the result goes on the journal: the point it extends (copy both into the Result)
    after: int = 0
    prev: str = ""
    model: ModelPlan | None = None  # for a step with a model policy or under a budget
    stream: bool = False  # the submitter watches partial output (``metadata: {"stream": "1"}``)
    # a held tool call a person approved with other arguments: the held call's digest -> the
    # arguments to send instead (the grant approves the call with these, and declines the other)
    replaced: dict[str, JSONObject] = {}


NonNegative = Annotated[int, msgspec.Meta(ge=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


class Usage(msgspec.Struct, kw_only=True):
    """Model use: of one call, one step attempt (summed over its calls), or a whole workflow.
    Never negative: a result that says otherwise does not decode (it could not lower a spend)."""

    input_tokens: NonNegative = 0
    output_tokens: NonNegative = 0
    cost_usd: NonNegativeFloat = 0.0
    model: str = ""  # the model that answered (the last one, for a sum)
    calls: NonNegative = 0
    latency_ms: NonNegativeFloat = 0.0
    cache_hits: NonNegative = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def plus(self, other: Usage) -> Usage:
        return Usage(input_tokens=self.input_tokens + other.input_tokens,
                     output_tokens=self.output_tokens + other.output_tokens,
                     cost_usd=round(self.cost_usd + other.cost_usd, 9),
                     model=other.model or self.model, calls=self.calls + other.calls,
                     latency_ms=round(self.latency_ms + other.latency_ms, 3),
                     cache_hits=self.cache_hits + other.cache_hits)


class Budget(msgspec.Struct, kw_only=True):
    """Ceilings on model use; 0 is none."""

    tokens: int = 0
    cost_usd: float = 0.0


class ModelPlan(msgspec.Struct, kw_only=True):
    """What the supervisor decided about a task's model calls: the models to try, in order (the
    first, then its fallbacks), why the first, and the ceilings the agent enforces before each
    call: ``call`` per call, ``left`` what the step and the workflow have left (the lesser)."""

    models: list[str]
    reason: str = ""
    call: Budget = msgspec.field(default_factory=Budget)
    left: Budget = msgspec.field(default_factory=Budget)


class ModelCall(msgspec.Struct, kw_only=True):
    """One call to a model (or a refusal to make one): ``error`` is why it did not answer."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    cached: bool = False
    error: str = ""
    estimated: bool = False  # the server reported no usage: tokens estimated from the text


class ModelUse(msgspec.Struct, kw_only=True):
    """How a result used models: the one that answered, why it was chosen, the ones tried before
    it and why each was passed over, the prompt (``name@version:sha256-prefix``), every call."""

    model: str = ""
    reason: str = ""
    tried: list[str] = []
    prompt: str = ""
    calls: list[ModelCall] = []


class ErrorInfo(msgspec.Struct, kw_only=True):
    code: str
    message: str
    retryable: bool = False


ResultStatus = Literal["ok", "error", "needs_human"]


class Result(_Linked, kw_only=True):
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
    model: ModelUse | None = None


class Partial(_Message, kw_only=True):
    """Partial output of a task as it is produced (model tokens), on core NATS at
    ``<prefix>.partial.<workflow_id>``: for a submitter watching live, never stored, never in the
    journal (only the final ``Result`` is). ``seq`` counts from 1 per task attempt."""

    workflow_id: str
    task_id: str
    step: str
    seq: int
    text: str = ""
    done: bool = False


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
    dry: bool = False  # run dry, under a shadow's grant: nothing happened
    needs_approval: bool = False  # dry: a live call with these arguments would wait for a person


EscalationKind = Literal[
    "low_confidence", "routed", "needs_human", "retries_exhausted", "failed", "approval",
    "over_budget",
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
    # the journal point the decision extends (as a task's: copy both into the Decision)
    after: int = 0
    prev: str = ""


DecisionAction = Literal["approve", "reject", "edit"]


class Decision(_Linked, kw_only=True):
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


TimerKind = Literal["timeout", "retry", "human"]


class TimerFired(_Linked, kw_only=True):
    """The supervisor's record that a workflow's timer came due: a step's timeout, a retry's
    backoff or a person's deadline, for the step and attempt it was set for."""

    workflow_id: str
    kind: TimerKind
    step: str
    attempt: int
    round: int = 0  # for a person's deadline: which escalation round it was set for


NoticeKind = Literal["task_dead_lettered"]


class Notice(_Linked, kw_only=True):
    """The supervisor's record of something that reached the workflow by no message of its own:
    a task the bus gave up on (delivered ``max_deliver`` times, never acknowledged)."""

    workflow_id: str
    kind: NoticeKind
    reason: str
    step: str = ""
    attempt: int = 0


OutcomeStatus = Literal["completed", "rejected", "failed"]


class StepTiming(msgspec.Struct, kw_only=True):
    step: str
    role: str
    attempt: int
    status: str
    duration_ms: float
    confidence: float | None = None
    usage: Usage | None = None


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
    # the journal at the end: its last record's sequence and digest, and the definition it ran
    journal_seq: int = 0
    journal_head: str = ""
    definition: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)  # model use of every step, summed


class ShadowCall(msgspec.Struct, kw_only=True):
    """One tool call a shadow agent made, run dry."""

    tool: str
    args: JSONObject
    ok: bool
    dry: bool = True
    needs_approval: bool = False  # live, these arguments would have waited for a person
    error: str = ""


SHADOW_REFRESH_S = 10.0  # a shadow agent writes its registration this often
SHADOW_STALE_S = 3 * SHADOW_REFRESH_S  # ... and is taken for gone when it has not for this long


class ShadowRegistration(msgspec.Struct, kw_only=True):
    """A shadow agent running: the value of key ``<role>`` in the ``shadows`` bucket."""

    role: str
    version: str
    instance: str = ""
    at: float


class ShadowResult(_Message, kw_only=True):
    """What a shadow agent made of its copy of a task: on ``<prefix>.shadow.result.<role>``,
    never on a journal, so it counts for nothing but the comparison (``switchyard eval shadow``)."""

    task_id: str
    workflow_id: str
    step: str
    role: str
    attempt: int
    version: str  # the shadow agent's version
    instance: str = ""
    status: ResultStatus
    output: JSONObject | None = None
    confidence: float = 1.0
    reason: str = ""
    error: ErrorInfo | None = None
    calls: list[ShadowCall] = []
    duration_ms: float = 0.0
    usage: Usage = msgspec.field(default_factory=Usage)
    model: ModelUse | None = None
    at: float = 0.0


MESSAGE_TYPES: tuple[type[msgspec.Struct], ...] = (
    WorkflowRequest,
    Task,
    Result,
    ToolCall,
    ToolResult,
    Escalation,
    Decision,
    TimerFired,
    Notice,
    Event,
    Outcome,
    Partial,
    ShadowResult,
)
