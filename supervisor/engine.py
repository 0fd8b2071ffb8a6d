"""The workflow engine: a pure function from (state, event) to (new state, effects).

No I/O, no clock, no randomness: ``now`` comes with every event (the time its journal record was
stored), so the same inputs always give the same outputs. The service folds a workflow's journal
through ``transition`` and carries out the effects of each new input, whose message ids are
deterministic (``<workflow>:<step>:<attempt>``): folding again after a crash re-sends what
JetStream already has, and it is dropped. ``switchyard audit verify`` folds the journal once more
and checks that it gives what was sent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from switchyard.protocol.events import EventType
from switchyard.protocol.grants import call_digest
from switchyard.protocol.messages import (
    Budget,
    Decision,
    Entry,
    Escalation,
    EscalationKind,
    ModelPlan,
    Outcome,
    Result,
    StepTiming,
    Usage,
    WorkflowRequest,
)
from switchyard.supervisor.routing import build_input, evaluate, holds
from switchyard.supervisor.workflow import END, HUMAN, ModelPolicy, Step, Workflow

Status = Literal["running", "waiting_human", "completed", "rejected", "failed"]
TERMINAL: frozenset[str] = frozenset({"completed", "rejected", "failed"})
TimerKind = Literal["", "timeout", "retry", "human"]


class StepRun(msgspec.Struct, kw_only=True):
    step: str
    role: str
    attempt: int
    status: str  # dispatched | ok | error | needs_human | timed_out | skipped
    dispatched_at: float
    finished_at: float = 0.0
    confidence: float | None = None
    error: str = ""
    agent: str = ""
    usage: Usage | None = None
    model: str = ""  # the model that answered, when one did


class Pending(msgspec.Struct, kw_only=True):
    id: str
    step: str
    kind: str
    reason: str
    deadline: float
    resume: str | None
    call_digest: str = ""  # for kind "approval": the exact tool call waiting for a person
    round: int = 0  # how many times it was escalated again after its deadline passed
    output: dict[str, Any] | None = None  # for kind "approval": what the person is shown
    queue: str = ""  # which people it went to
    created_at: float = 0.0  # when it was raised (a trace's human wait starts there)


class WorkflowState(msgspec.Struct, kw_only=True):
    id: str
    workflow: str
    status: Status
    input: dict[str, Any]
    created_at: float
    updated_at: float
    outputs: dict[str, Any] = {}
    current: str = ""
    role: str = ""
    attempt: int = 0
    timer_kind: TimerKind = ""
    timer_at: float = 0.0
    history: list[StepRun] = []
    escalation: Pending | None = None
    escalations: int = 0
    approved: dict[str, str] = {}  # call digest -> approver, carried in every later grant
    declined: list[str] = []
    replaced: dict[str, dict[str, Any]] = {}  # held call's digest -> the arguments a person set
    output: dict[str, Any] | None = None
    reason: str = ""
    # the journal folded so far: the last record's sequence and digest, how many records
    definition: str = ""  # the digest of the workflow definition the run started with
    seq: int = 0
    head: str = ""
    inputs: int = 0
    snapshot: bool = False  # a snapshot of this run was written (so its end is written too)
    spend: Usage = msgspec.field(default_factory=Usage)  # model use of every result, summed
    model: str = ""  # the current step's model after an escalation to a stronger one
    waivers: int = 0  # times a person let the run go on past a ceiling: each grants it once more
    stream: bool = False  # the submitter watches partial output live


# events in ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    request: WorkflowRequest


@dataclass(frozen=True)
class ResultReceived:
    result: Result


@dataclass(frozen=True)
class DecisionReceived:
    decision: Decision


@dataclass(frozen=True)
class TaskDeadLettered:
    """A task was delivered its maximum number of times and never acknowledged."""

    step: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class TimerFired:
    kind: TimerKind
    step: str
    attempt: int
    round: int = 0  # for a person's deadline: the escalation round it was set for


EngineEvent = Submitted | ResultReceived | DecisionReceived | TimerFired | TaskDeadLettered

# effects out ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendTask:
    task_id: str
    step: str
    role: str
    attempt: int
    input: dict[str, Any]
    tools: list[str]
    tool_budget: int
    deadline: float
    approved: dict[str, str] = field(default_factory=dict)
    declined: list[str] = field(default_factory=list)
    replaced: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: ModelPlan | None = None
    stream: bool = False


@dataclass(frozen=True)
class SendEscalation:
    escalation: Escalation


@dataclass(frozen=True)
class CloseEscalation:
    escalation_id: str


@dataclass(frozen=True)
class SendOutcome:
    outcome: Outcome


Effect = SendTask | SendEscalation | CloseEscalation | SendOutcome


@dataclass
class Transition:
    state: WorkflowState | None
    effects: list[Effect] = field(default_factory=list)
    changed: bool = False
    ignored: str = ""  # for an event that changed nothing: why (a stale attempt, a finished run)
    entries: list[Entry] = field(default_factory=list)  # what happened, for traces and replay


def task_id(workflow_id: str, step: str, attempt: int) -> str:
    return f"{workflow_id}:{step}:{attempt}"


def backoff(step: Step, attempt: int, seed: str) -> float:
    """Exponential backoff with deterministic jitter (0.5x-1.0x), capped by ``backoff_max_s``."""
    base = min(step.backoff_max_s, step.backoff_s * (2 ** max(0, attempt - 1)))
    jitter = int(hashlib.blake2b(seed.encode(), digest_size=2).hexdigest(), 16) / 0xFFFF
    return float(base * (0.5 + 0.5 * jitter))


class _Run:
    """One transition in progress: a copy of the state plus the effects it implies."""

    def __init__(self, wf: Workflow, state: WorkflowState, now: float) -> None:
        self.wf = wf
        self.s = state
        self.now = now
        self.effects: list[Effect] = []
        self.entries: list[Entry] = []

    # helpers
    def event(self, event_type: str, step: str = "", /, **data: Any) -> None:
        self.entries.append(Entry(type=event_type, step=step, data=data))

    def document(self, output: Any = None, confidence: float | None = None) -> dict[str, Any]:
        return {
            "input": self.s.input, "steps": self.s.outputs,
            "output": output, "confidence": confidence,
        }

    def set_timer(self, kind: TimerKind, at: float) -> None:
        self.s.timer_kind, self.s.timer_at = kind, at

    def clear_timer(self) -> None:
        self.set_timer("", 0.0)

    def last_run(self) -> StepRun | None:
        """The current attempt's record, copied on the way out (the history list is a shallow
        copy, so the state the transition started from stays as it was)."""
        history = self.s.history
        for i in range(len(history) - 1, -1, -1):
            run = history[i]
            if run.step == self.s.current and run.attempt == self.s.attempt:
                history[i] = run = msgspec.structs.replace(run)
                return run
        return None

    # moves
    def enter(self, name: str | None) -> None:
        """Start step ``name`` (skipping it if its ``when`` is false); None completes."""
        while name is not None:
            step = self.wf.step(name)
            if step.when and not holds(step.when, self.document()):
                self.s.history.append(
                    StepRun(step=name, role=step.role, attempt=0, status="skipped",
                            dispatched_at=self.now, finished_at=self.now)
                )
                self.event(EventType.STEP_SKIPPED, name)
                name = self.wf.after(name)
                continue
            self.s.current, self.s.role, self.s.attempt = name, step.role, 0
            self.s.model = ""
            self.dispatch(step)
            return
        self.finish("completed", self.final_output(), "")

    def task(self, step: Step, deadline: float) -> SendTask:
        """The task of the current attempt of ``step``."""
        s = self.s
        return SendTask(
            task_id=task_id(s.id, step.name, s.attempt), step=step.name, role=s.role,
            attempt=s.attempt, input=build_input(step.input, self.document()),
            tools=list(step.tools), tool_budget=step.tool_budget, deadline=deadline,
            approved=dict(s.approved), declined=list(s.declined), model=self.plan(step),
            stream=s.stream, replaced=dict(s.replaced),
        )

    # models and budgets
    def plan(self, step: Step) -> ModelPlan | None:
        """The task's model plan: the models to try and the ceilings it runs under (None for
        a step with no model policy in a run with no budget)."""
        policy = step.model
        if policy is None and not self.wf.budget:
            return None
        models, reason, call = [], "", Budget()
        if policy is not None:
            if self.s.model:
                chosen, reason = self.s.model, (f"escalated to {self.s.model}: the result before "
                                                f"was under the threshold {step.threshold:g}")
            else:
                chosen, reason = self.choose(policy)
            models = [chosen, *(f for f in policy.fallbacks if f != chosen)]
            call = Budget(tokens=policy.call.tokens, cost_usd=policy.call.cost_usd)
        return ModelPlan(models=models, reason=reason, call=call, left=self.left(step))

    def choose(self, policy: ModelPolicy) -> tuple[str, str]:
        if policy.rules:
            scores = {r.step: r.confidence for r in self.s.history if r.status == "ok"}
            doc = {**self.document(), "scores": scores}
            for rule in policy.rules:
                if holds(rule.when, doc):
                    return rule.use, rule.reason or f"rule: {rule.when}"
        return policy.use, "the step's model"

    def step_spend(self, name: str) -> Usage:
        spent = Usage()
        for run in self.s.history:
            if run.step == name and run.usage is not None:
                spent = spent.plus(run.usage)
        return spent

    def ceilings(self, step: Step) -> list[tuple[str, int, float, Usage]]:
        """(what, tokens, USD, spent) for the run's budget and the step's."""
        out = []
        if self.wf.budget:
            out.append(("the workflow", self.wf.budget.tokens, self.wf.budget.cost_usd,
                        self.s.spend))
        if step.model is not None and step.model.budget:
            b = step.model.budget
            out.append((f"step {step.name}", b.tokens, b.cost_usd, self.step_spend(step.name)))
        # each waiver gives the run (and each step) its ceilings once more: bounded, not lifted
        factor = 1 + self.s.waivers
        return [(what, tokens * factor, usd * factor, spent) for what, tokens, usd, spent in out]

    def left(self, step: Step) -> Budget:
        """What the step and the run have left, the lesser of each (0: no ceiling)."""
        tokens = [max(1, t - spent.tokens) for _, t, _, spent in self.ceilings(step) if t]
        usd = [max(1e-9, c - spent.cost_usd) for _, _, c, spent in self.ceilings(step) if c]
        # a ceiling reached stops the step at dispatch; what is left is never 0 ("none") here
        return Budget(tokens=min(tokens, default=0),
                      cost_usd=max(1e-9, round(min(usd), 9)) if usd else 0.0)

    def over_budget(self, step: Step) -> str:
        """Why the run may not start another attempt of ``step`` ("" if it may)."""
        for what, tokens, usd, spent in self.ceilings(step):
            if tokens and spent.tokens >= tokens:
                return f"{what} has used {spent.tokens} of its {tokens} tokens"
            if usd and spent.cost_usd >= usd:
                return f"{what} has used {spent.cost_usd:.6f} of its {usd:g} USD"
        return ""

    def over(self, step: Step, why: str) -> None:
        """The budget's path: a person decides whether the run goes on, or it fails."""
        self.event(EventType.WORKFLOW_OVER_BUDGET, step.name, reason=why,
                   on=self.wf.on_over_budget)
        if self.wf.on_over_budget == "stop":
            self.finish("failed", None, f"over budget: {why}")
        else:
            self.escalate(step.name, "over_budget", f"over budget: {why}", resume=step.name,
                          suffix=f"budget{self.s.waivers}")

    def dispatch(self, step: Step) -> None:
        why = self.over_budget(step)
        if why:
            self.over(step, why)
            return
        self.s.attempt += 1
        tid = task_id(self.s.id, step.name, self.s.attempt)
        deadline = self.now + step.timeout_s
        self.s.status = "running"
        self.s.history.append(
            StepRun(step=step.name, role=self.s.role, attempt=self.s.attempt,
                    status="dispatched", dispatched_at=self.now)
        )
        self.set_timer("timeout", deadline)
        task = self.task(step, deadline)
        self.effects.append(task)
        plan = task.model.models[0] if task.model and task.model.models else ""
        self.event(EventType.STEP_DISPATCHED, step.name, role=self.s.role, attempt=self.s.attempt,
                   task_id=tid, grant=tid, tools=list(step.tools),
                   **({"model": plan, "model_reason": task.model.reason} if task.model and plan
                      else {}))

    def proceed(self, step: Step, output: Any, confidence: float, answered: str = "") -> None:
        """After an accepted output: threshold (a stronger model first, if the step names one),
        then routes, then the next step."""
        stronger = step.model.escalate_to if step.model else None
        if confidence < step.threshold and stronger and stronger not in (answered, self.s.model):
            self.event(EventType.STEP_MODEL_ESCALATED, step.name, model=stronger,
                       answered=answered, confidence=confidence, threshold=step.threshold)
            self.s.model = stronger
            self.dispatch(step)
            return
        if confidence < step.threshold:
            self.escalate(
                step.name, "low_confidence",
                f"confidence {confidence:.2f} is below the threshold {step.threshold:.2f} "
                f"of step {step.name}",
                resume=self.wf.after(step.name), output=output, confidence=confidence,
            )
            return
        doc = self.document(output, confidence)
        for route in step.routes:
            if not holds(route.when, doc):
                continue
            self.event(EventType.STEP_ROUTED, step.name, to=route.to, when=route.when)
            if route.to == HUMAN:
                reason = route.reason or f"routed to a person by {route.when}"
                if route.detail:
                    detail = evaluate(route.detail, doc)
                    reason += f": {detail}" if detail not in (None, "", []) else ""
                self.escalate(
                    step.name, "routed", reason,
                    resume=route.resume or self.wf.after(step.name), output=output,
                    confidence=confidence,
                )
            elif route.to == END:
                self.finish("completed", self.final_output(), "")
            else:
                self.enter(route.to)
            return
        self.enter(self.wf.after(step.name))

    def escalate(
        self, step: str, kind: EscalationKind, reason: str, *, resume: str | None,
        output: Any = None, confidence: float | None = None, call_digest: str = "",
        round: int = 0, queue: str | None = None, suffix: str = "",
    ) -> None:
        queue = self.wf.human_queue if queue is None else queue
        # an id of its own: an over-budget escalation can follow another at the same attempt
        esc_id = (f"{self.s.id}:{step}:{self.s.attempt}:esc" + (f":r{round}" if round else "")
                  + (f":{suffix}" if suffix else ""))
        wait = self.wf.human_deadline_s
        if kind == "approval":
            wait = self.wf.approval_deadline_s or 3600.0
        deadline = self.now + wait
        self.s.status = "waiting_human"
        self.s.escalations += 1
        self.s.escalation = Pending(
            id=esc_id, step=step, kind=kind, reason=reason, deadline=deadline, resume=resume,
            call_digest=call_digest, round=round,
            output=output if kind == "approval" and isinstance(output, dict) else None,
            queue=queue, created_at=self.now,
        )
        self.set_timer("human", deadline)
        self.effects.append(
            SendEscalation(
                Escalation(
                    id=esc_id, workflow_id=self.s.id, workflow=self.s.workflow, step=step,
                    kind=kind, reason=reason, output=output, confidence=confidence,
                    input=self.s.input, created_at=self.now, deadline=deadline, queue=queue,
                )
            )
        )
        self.event(EventType.ESCALATED, step, kind=kind, reason=reason, escalation_id=esc_id,
                   **({"queue": queue} if queue else {}))

    def retry_or_give_up(self, step: Step, code: str, message: str, retryable: bool) -> None:
        extra_attempts_used = self.s.attempt - 1
        if retryable and extra_attempts_used < step.retries:
            delay = backoff(step, self.s.attempt, task_id(self.s.id, step.name, self.s.attempt))
            self.set_timer("retry", self.now + delay)
            self.event(EventType.STEP_RETRY_SCHEDULED, step.name, attempt=self.s.attempt,
                       delay_s=round(delay, 3), code=code)
            return
        if step.fallback_role and self.s.role != step.fallback_role:
            self.event(EventType.STEP_FALLBACK, step.name, role=step.fallback_role, code=code)
            self.s.role = step.fallback_role
            self.dispatch(step)
            return
        kind: EscalationKind = "retries_exhausted" if retryable else "failed"
        self.escalate(
            step.name, kind, f"step {step.name} failed after {self.s.attempt} attempt(s): "
            f"{code}: {message}", resume=self.wf.after(step.name),
        )

    def final_output(self) -> dict[str, Any] | None:
        if self.wf.output:
            value = evaluate(self.wf.output, self.document())
            return value if isinstance(value, dict) else {"value": value}
        last = self.wf.steps[-1].name
        return self.s.outputs.get(last)

    def finish(self, status: Status, output: dict[str, Any] | None, reason: str) -> None:
        self.s.status = status
        self.s.output = output
        self.s.reason = reason
        self.clear_timer()
        # the outcome first: whoever sees the final event can read the outcome
        self.effects.append(SendOutcome(outcome_of(self.s, self.now)))
        spend = self.s.spend
        self.event(EventType(f"workflow.{status}"), "", reason=reason,
                   **({"model_calls": spend.calls, "input_tokens": spend.input_tokens,
                       "output_tokens": spend.output_tokens, "cost_usd": spend.cost_usd}
                      if spend.calls else {}))


def ended_wait(before: WorkflowState | None, after: WorkflowState) -> Pending | None:
    """The escalation a transition from ``before`` to ``after`` ended (decided, or past its
    deadline), if one."""
    pending = before.escalation if before is not None else None
    if pending is not None and (after.escalation is None or after.escalation.id != pending.id):
        return pending
    return None


def outcome_of(s: WorkflowState, now: float) -> Outcome:
    steps = [
        StepTiming(
            step=r.step, role=r.role, attempt=r.attempt, status=r.status,
            duration_ms=round(max(0.0, (r.finished_at or now) - r.dispatched_at) * 1000, 3),
            confidence=r.confidence, usage=r.usage if r.usage and r.usage.calls else None,
        )
        for r in s.history
    ]
    return Outcome(
        workflow_id=s.id, workflow=s.workflow, status=s.status,  # type: ignore[arg-type]
        output=s.output, reason=s.reason, steps=steps, escalations=s.escalations,
        started_at=s.created_at, finished_at=now, journal_seq=s.seq, journal_head=s.head,
        definition=s.definition, usage=s.spend,
    )


def transition(
    wf: Workflow | None, state: WorkflowState | None, event: EngineEvent, now: float
) -> Transition:
    """Apply ``event``. An event that does not fit the state (a duplicate, a stale result, a
    timer already overtaken) changes nothing and sends nothing."""
    if isinstance(event, Submitted):
        if state is not None:
            return Transition(state, ignored=f"workflow {state.id} already exists "
                                             f"({state.status})")
        req = event.request
        if wf is None:  # a workflow nobody defines: the run fails at once, with why
            failed = WorkflowState(
                id=req.id, workflow=req.workflow, status="failed", input=req.input,
                created_at=now, updated_at=now, reason=f"unknown workflow {req.workflow!r}")
            return Transition(failed, [SendOutcome(outcome_of(failed, now))], changed=True,
                              entries=[Entry(type=EventType.WORKFLOW_FAILED,
                                             data={"reason": failed.reason})])
        fresh = WorkflowState(
            id=req.id, workflow=wf.name, status="running", input=req.input,
            created_at=now, updated_at=now, definition=wf.digest(),
            stream=req.metadata.get("stream") == "1",
        )
        run = _Run(wf, fresh, now)
        run.event(EventType.WORKFLOW_SUBMITTED, "", workflow=wf.name, version=wf.version)
        run.enter(wf.steps[0].name)
        return _done(run)
    if state is None:
        return Transition(state, ignored="no such workflow")
    if state.status in TERMINAL:
        return Transition(state, ignored=f"the workflow has finished ({state.status})")
    if wf is None:
        return Transition(state, ignored=f"workflow {state.workflow!r} is not defined here")
    copy = msgspec.structs.replace(
        state, history=list(state.history), outputs=dict(state.outputs),
    )
    run = _Run(wf, copy, now)
    if isinstance(event, ResultReceived):
        ignored = _on_result(run, event.result)
    elif isinstance(event, DecisionReceived):
        ignored = _on_decision(run, event.decision)
    elif isinstance(event, TaskDeadLettered):
        ignored = _on_dead_letter(run, event)
    else:
        ignored = _on_timer(run, event)
    if not run.effects and not run.entries:
        return Transition(state, ignored=ignored or "it changes nothing")
    return _done(run)


def _done(run: _Run) -> Transition:
    run.s.updated_at = run.now
    return Transition(run.s, run.effects, changed=True, entries=run.entries)


def _awaited(s: WorkflowState) -> str:
    return (f"step {s.current} attempt {s.attempt} is awaited" if s.status == "running"
            else f"the workflow is {s.status}")


def _on_result(run: _Run, r: Result) -> str | None:
    s = run.s
    if s.status != "running" or r.step != s.current or r.attempt != s.attempt:
        return f"step {r.step} attempt {r.attempt} is no longer awaited ({_awaited(s)})"
    record = run.last_run()
    if record is None or record.status != "dispatched":
        return f"step {r.step} attempt {r.attempt} has its result already"
    step = run.wf.step(s.current)
    record.finished_at = run.now
    record.confidence = r.confidence
    record.agent = r.agent
    record.usage = r.usage
    record.status = r.status
    record.model = r.model.model if r.model else ""
    s.spend = s.spend.plus(r.usage)
    run.clear_timer()
    u = r.usage
    run.event(EventType.step(r.status), step.name, attempt=r.attempt, confidence=r.confidence,
              agent=r.agent, duration_ms=r.duration_ms,
              **({"error": r.error.code} if r.error else {}),
              **({"model": record.model, "model_reason": r.model.reason if r.model else "",
                  "tried": r.model.tried if r.model else [], "input_tokens": u.input_tokens,
                  "output_tokens": u.output_tokens, "cost_usd": u.cost_usd, "calls": u.calls,
                  "latency_ms": u.latency_ms, "cache_hits": u.cache_hits}
                 if record.model else {}))
    if r.status == "ok":
        s.outputs[step.name] = r.output or {}
        run.proceed(step, r.output or {}, r.confidence, record.model)
    elif r.status == "needs_human" and isinstance((r.output or {}).get("approval"), dict):
        call = (r.output or {})["approval"]  # a tool call the policy holds for a person
        run.escalate(
            step.name, "approval", r.reason or f"{call.get('tool')} needs a person's approval",
            resume=step.name, output=r.output, confidence=r.confidence,
            # the digest of the call the person is shown, computed here: an agent's own claim
            # of a digest could name another call than the tool and arguments it reports
            call_digest=call_digest(str(call.get("tool", "")), args)
            if isinstance(args := call.get("args"), dict) else "",
        )
    elif r.status == "needs_human":
        if r.output is not None:
            s.outputs[step.name] = r.output
        run.escalate(
            step.name, "needs_human", r.reason or "the agent asked for a person",
            resume=run.wf.after(step.name), output=r.output, confidence=r.confidence,
        )
    else:
        err = r.error
        record.error = err.code if err else "error"
        if err is not None and err.code == "model_budget":  # refused before the call was made
            run.over(step, err.message)
            return None
        run.retry_or_give_up(
            step, err.code if err else "error", err.message if err else r.reason,
            bool(err and err.retryable),
        )
    return None


def _on_decision(run: _Run, d: Decision) -> str | None:
    s = run.s
    pending = s.escalation
    if s.status != "waiting_human" or pending is None:
        return f"workflow {s.id} holds no escalation ({_awaited(s)})"
    if d.escalation_id != pending.id:
        return f"escalation {d.escalation_id} is not held by workflow {s.id} (it holds {pending.id})"
    run.clear_timer()
    s.escalation = None
    run.effects.append(CloseEscalation(pending.id))
    run.event(EventType.DECISION, pending.step, action=d.action, reviewer=d.reviewer, note=d.note,
              escalation_id=pending.id)
    if pending.kind == "approval":
        # the step runs again (a new attempt) under a grant that names the decided call:
        # approved, it executes once with the approver recorded; rejected, the agent is refused
        held = (pending.output or {}).get("approval") or {}
        args = (d.output or {}).get("args") if d.action == "edit" else None
        if d.action == "reject":
            s.declined = [*s.declined, pending.call_digest]
        elif isinstance(args, dict) and isinstance(held, dict) and held.get("tool"):
            # approved with the person's arguments: that call is approved, the held one declined,
            # and the agent told to send the one in place of the other
            s.declined = [*s.declined, pending.call_digest]
            s.approved = {**s.approved, call_digest(str(held["tool"]), args): d.reviewer}
            s.replaced = {**s.replaced, pending.call_digest: args}
        else:
            s.approved = {**s.approved, pending.call_digest: d.reviewer}
        run.dispatch(run.wf.step(pending.step))
        return None
    if pending.kind == "over_budget" and d.action != "reject":
        # a person lets it go on: the ceilings once more, and the step where it stopped, at
        # its next attempt and on the model it was to use (an edit is an approval here)
        s.waivers += 1
        run.dispatch(run.wf.step(pending.step))
        return None
    if d.action == "reject":
        run.finish("rejected", s.outputs.get(pending.step), f"rejected by {d.reviewer}"
                   + (f": {d.note}" if d.note else ""))
        return None
    if d.action == "edit" and d.output is not None:
        s.outputs[pending.step] = d.output
    run.enter(pending.resume)
    return None


def _on_dead_letter(run: _Run, d: TaskDeadLettered) -> str | None:
    s = run.s
    if s.status != "running" or d.step != s.current or d.attempt != s.attempt:
        # an old attempt's task: the workflow has moved on
        return f"step {d.step} attempt {d.attempt} is no longer awaited ({_awaited(s)})"
    record = run.last_run()
    if record is not None:
        record.status, record.finished_at, record.error = "error", run.now, "dead_lettered"
    run.clear_timer()
    step = run.wf.step(s.current)
    run.event(EventType.STEP_DEAD_LETTERED, step.name, attempt=s.attempt, reason=d.reason)
    if step.fallback_role and s.role != step.fallback_role:
        run.event(EventType.STEP_FALLBACK, step.name, role=step.fallback_role, code="dead_lettered")
        s.role = step.fallback_role
        run.dispatch(step)
    elif run.wf.on_dead_letter == "fail":
        run.finish("failed", None, f"step {step.name}: {d.reason}")
    else:
        run.escalate(step.name, "failed", f"step {step.name}: {d.reason}",
                     resume=run.wf.after(step.name))
    return None


def _on_timer(run: _Run, t: TimerFired) -> str | None:
    s = run.s
    # when it was due is the supervisor's word (its record says it fired); the state decides
    # only whether it is still the timer that is set
    if t.kind != s.timer_kind or t.step != s.current or t.attempt != s.attempt:
        return "the timer was overtaken"
    if t.kind == "human":
        pending = s.escalation
        assert pending is not None
        if pending.round != t.round:
            return "the timer was overtaken"
        s.escalation = None
        run.effects.append(CloseEscalation(pending.id))
        run.event(EventType.ESCALATION_EXPIRED, pending.step, escalation_id=pending.id)
        if pending.kind == "approval":
            if run.wf.on_approval_timeout == "re_escalate":
                run.escalate(pending.step, "approval", f"{pending.reason} (not decided in time; "
                             "escalated again)", resume=pending.resume,
                             output=pending.output, call_digest=pending.call_digest,
                             round=pending.round + 1, queue=run.wf.re_escalate_to or pending.queue)
                return None
            s.declined = [*s.declined, pending.call_digest]  # nobody approved it: refused
            run.dispatch(run.wf.step(pending.step))
            return None
        if run.wf.on_human_timeout == "re_escalate":
            run.escalate(pending.step, pending.kind,  # type: ignore[arg-type]
                         f"{pending.reason} (not decided in time; escalated again)",
                         resume=pending.resume, output=s.outputs.get(pending.step),
                         round=pending.round + 1, queue=run.wf.re_escalate_to or pending.queue)
            return None
        status: Status = "rejected" if run.wf.on_human_timeout == "reject" else "failed"
        run.finish(status, None, f"no decision on {pending.id} by its deadline")
        return None
    step = run.wf.step(s.current)
    if t.kind == "retry":
        run.clear_timer()
        run.dispatch(step)
        return None
    record = run.last_run()
    if record is not None:
        record.status, record.finished_at, record.error = "timed_out", run.now, "timeout"
    run.clear_timer()
    run.event(EventType.STEP_TIMED_OUT, step.name, attempt=s.attempt)
    run.retry_or_give_up(step, "timeout", f"no result within {step.timeout_s:g} s", True)
    return None


def due(wf: Workflow | None, state: WorkflowState, now: float) -> list[Effect]:
    """What a folded state says must already be on the bus: re-sent after a crash (the ids are
    deterministic, so JetStream drops what did arrive): the outcome, or the task or escalation
    that is waiting."""
    if state.status in TERMINAL:
        return [SendOutcome(outcome_of(state, state.updated_at))]
    if wf is None:
        return []
    if state.status == "running" and state.timer_kind == "timeout":
        return [_Run(wf, state, now).task(wf.step(state.current), state.timer_at)]
    if state.status == "waiting_human" and state.escalation is not None:
        p = state.escalation
        return [
            SendEscalation(
                Escalation(
                    id=p.id, workflow_id=state.id, workflow=state.workflow, step=p.step,
                    kind=p.kind,  # type: ignore[arg-type]
                    reason=p.reason, output=p.output or state.outputs.get(p.step),
                    input=state.input,
                    created_at=state.updated_at, deadline=p.deadline, queue=p.queue,
                )
            ),
        ]
    return []
