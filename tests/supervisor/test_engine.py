"""The engine is a pure function: these tests need no server."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.protocol import Decision, ErrorInfo, Result, WorkflowRequest
from switchyard.protocol.errors import ConfigError
from switchyard.protocol.grants import call_digest
from switchyard.supervisor.engine import (
    CloseEscalation,
    DecisionReceived,
    Effect,
    ResultReceived,
    SendEscalation,
    SendOutcome,
    SendTask,
    Submitted,
    TimerFired,
    Transition,
    WorkflowState,
    due,
    transition,
)
from switchyard.supervisor.workflow import Workflow, parse_workflow

FLOW = parse_workflow("""
name: flow
steps:
  - name: triage
    role: triage
    threshold: 0.5
    timeout_s: 10
    retries: 1
    backoff_s: 2
    routes:
      - when: "output.intent == 'legal'"
        to: "@human"
        reason: legal goes to a person
      - when: "output.intent == 'spam'"
        to: "@end"
  - name: fix
    role: fixer
    when: "steps.triage.intent == 'technical'"
    input: {what: input.text}
  - name: answer
    role: writer
    fallback_role: senior_writer
    retries: 0
    tools: [kb_search]
    tool_budget: 3
    input: {text: input.text, intent: steps.triage.intent}
""")
T0 = 1000.0


def tasks(effects: list[Effect]) -> list[SendTask]:
    return [e for e in effects if isinstance(e, SendTask)]


def events(t: Transition) -> list[str]:
    return [x.type for x in t.entries]


def submit(text: str = "hello", wf: Workflow = FLOW) -> Transition:
    req = WorkflowRequest(id="w1", workflow=wf.name, input={"text": text}, submitted_at=T0)
    return transition(wf, None, Submitted(req), T0)


def result(state: WorkflowState, status: str = "ok", output: dict[str, Any] | None = None,
           confidence: float = 0.9, error: ErrorInfo | None = None, **kw: Any) -> Result:
    return Result(task_id=f"w1:{state.current}:{state.attempt}", workflow_id="w1",
                  step=kw.get("step", state.current), role=state.role,
                  attempt=kw.get("attempt", state.attempt), status=status,  # type: ignore[arg-type]
                  output=output, confidence=confidence, error=error)


def step(state: WorkflowState, now: float, **kw: Any) -> Transition:
    t = transition(FLOW, state, ResultReceived(result(state, **kw)), now)
    assert t.state is not None
    return t


def test_engine_submit_dispatches_the_first_step_with_a_deterministic_id() -> None:
    t = submit()
    assert t.state is not None and t.state.status == "running"
    (task,) = tasks(t.effects)
    assert (task.task_id, task.role, task.attempt, task.deadline) == ("w1:triage:1", "triage", 1, T0 + 10)
    assert events(t) == ["workflow.submitted", "step.dispatched"]
    assert t.state.timer_kind == "timeout" and t.state.timer_at == T0 + 10


def test_engine_resubmit_is_a_no_op() -> None:
    t = submit()
    again = transition(FLOW, t.state, Submitted(WorkflowRequest(
        id="w1", workflow="flow", input={}, submitted_at=T0)), T0 + 1)
    assert again.effects == [] and again.state is t.state and not again.changed


def test_engine_ok_result_advances_and_maps_input() -> None:
    s = submit("printer on fire").state
    assert s is not None
    t = step(s, T0 + 1, output={"intent": "billing"})
    (task,) = tasks(t.effects)
    assert task.step == "answer"  # 'fix' is skipped: its condition is false
    assert task.input == {"text": "printer on fire", "intent": "billing"}
    assert (task.tools, task.tool_budget) == (["kb_search"], 3)
    assert "step.skipped" in events(t)


def test_engine_condition_true_runs_the_step() -> None:
    s = submit("crash").state
    assert s is not None
    t = step(s, T0 + 1, output={"intent": "technical"})
    assert tasks(t.effects)[0].input == {"what": "crash"}


def test_engine_completes_with_an_outcome_and_timings() -> None:
    s = submit().state
    assert s is not None
    s = step(s, T0 + 1, output={"intent": "billing"}).state
    assert s is not None
    t = step(s, T0 + 3, output={"reply": "done"})
    assert t.state is not None and t.state.status == "completed"
    (outcome,) = [e.outcome for e in t.effects if isinstance(e, SendOutcome)]
    assert outcome.status == "completed" and outcome.output == {"reply": "done"}
    timings = {(x.step, x.status): x.duration_ms for x in outcome.steps}
    assert timings[("triage", "ok")] == 1000.0 and timings[("answer", "ok")] == 2000.0
    assert t.state.timer_kind == ""


def test_engine_route_to_end_completes_early() -> None:
    s = submit().state
    assert s is not None
    t = step(s, T0 + 1, output={"intent": "spam"})
    assert t.state is not None and t.state.status == "completed" and not tasks(t.effects)


def test_engine_route_to_human_escalates_then_approve_resumes() -> None:
    s = submit().state
    assert s is not None
    t = step(s, T0 + 1, output={"intent": "legal"})
    assert t.state is not None and t.state.status == "waiting_human"
    (esc,) = [e.escalation for e in t.effects if isinstance(e, SendEscalation)]
    assert (esc.kind, esc.reason, esc.id) == ("routed", "legal goes to a person", "w1:triage:1:esc")
    assert t.state.timer_kind == "human"
    d = Decision(escalation_id=esc.id, workflow_id="w1", action="approve", reviewer="ann",
                 decided_at=T0 + 5)
    t2 = transition(FLOW, t.state, DecisionReceived(d), T0 + 5)
    assert t2.state is not None and t2.state.status == "running"
    assert tasks(t2.effects)[0].step == "answer"
    assert CloseEscalation(esc.id) in t2.effects
    # the same decision again changes nothing
    assert transition(FLOW, t2.state, DecisionReceived(d), T0 + 6).effects == []


def test_engine_reject_decision_ends_the_workflow() -> None:
    s = submit().state
    assert s is not None
    t = step(s, T0 + 1, output={"intent": "legal"})
    assert t.state is not None and t.state.escalation is not None
    d = Decision(escalation_id=t.state.escalation.id, workflow_id="w1", action="reject",
                 reviewer="ann", note="spam", decided_at=T0 + 2)
    t2 = transition(FLOW, t.state, DecisionReceived(d), T0 + 2)
    assert t2.state is not None and t2.state.status == "rejected"
    assert t2.state.reason == "rejected by ann: spam"


def test_engine_low_confidence_escalates_and_edit_replaces_the_output() -> None:
    s = submit().state
    assert s is not None
    t = step(s, T0 + 1, output={"intent": "billing"}, confidence=0.3)
    assert t.state is not None
    (esc,) = [e.escalation for e in t.effects if isinstance(e, SendEscalation)]
    assert esc.kind == "low_confidence" and "0.30 is below the threshold 0.50" in esc.reason
    d = Decision(escalation_id=esc.id, workflow_id="w1", action="edit", reviewer="ann",
                 output={"intent": "account"}, decided_at=T0 + 2)
    t2 = transition(FLOW, t.state, DecisionReceived(d), T0 + 2)
    assert t2.state is not None and t2.state.outputs["triage"] == {"intent": "account"}
    assert tasks(t2.effects)[0].input["intent"] == "account"


def test_engine_needs_human_result_escalates() -> None:
    s = submit().state
    assert s is not None
    t = step(s, T0 + 1, status="needs_human", output={"x": 1}, confidence=0.1)
    (esc,) = [e.escalation for e in t.effects if isinstance(e, SendEscalation)]
    assert esc.kind == "needs_human"


def test_engine_ignores_stale_and_duplicate_results() -> None:
    s = submit().state
    assert s is not None
    stale = transition(FLOW, s, ResultReceived(result(s, attempt=7)), T0 + 1)
    assert not stale.changed and stale.effects == []
    other = transition(FLOW, s, ResultReceived(result(s, step="answer")), T0 + 1)
    assert not other.changed
    once = step(s, T0 + 1, output={"intent": "billing"})
    twice = transition(FLOW, once.state, ResultReceived(result(s, output={"intent": "x"})), T0 + 2)
    assert not twice.changed


def test_engine_timeout_retries_with_backoff_then_escalates() -> None:
    s = submit().state
    assert s is not None
    stale = transition(FLOW, s, TimerFired("timeout", "triage", 2), T0 + 5)
    assert not stale.changed and stale.ignored == "the timer was overtaken"
    t = transition(FLOW, s, TimerFired("timeout", "triage", 1), T0 + 10)
    assert t.state is not None and t.state.timer_kind == "retry"
    assert "step.timed_out" in events(t) and not tasks(t.effects)
    assert T0 + 10 + 1.0 <= t.state.timer_at <= T0 + 10 + 2.0  # backoff 2 s, jitter 0.5-1.0
    t2 = transition(FLOW, t.state, TimerFired("retry", "triage", 1), t.state.timer_at)
    (task,) = tasks(t2.effects)
    assert (task.task_id, task.attempt) == ("w1:triage:2", 2)
    assert t2.state is not None
    t3 = transition(FLOW, t2.state, TimerFired("timeout", "triage", 2), t2.state.timer_at)
    (esc,) = [e.escalation for e in t3.effects if isinstance(e, SendEscalation)]
    assert esc.kind == "retries_exhausted" and "after 2 attempt(s)" in esc.reason


def test_engine_non_retryable_error_falls_back_to_another_role_then_escalates() -> None:
    s = submit().state
    assert s is not None
    s = step(s, T0 + 1, output={"intent": "billing"}).state
    assert s is not None
    err = ErrorInfo(code="internal", message="boom", retryable=False)
    t = step(s, T0 + 2, status="error", error=err)
    (task,) = tasks(t.effects)
    assert (task.role, task.attempt) == ("senior_writer", 2)
    assert t.state is not None
    t2 = step(t.state, T0 + 3, status="error", error=err)
    (esc,) = [e.escalation for e in t2.effects if isinstance(e, SendEscalation)]
    assert esc.kind == "failed" and "internal: boom" in esc.reason


def test_engine_human_deadline_rejects_by_policy() -> None:
    s = submit().state
    assert s is not None
    t = step(s, T0 + 1, output={"intent": "legal"})
    assert t.state is not None
    deadline = t.state.timer_at
    assert deadline == T0 + 1 + FLOW.human_deadline_s
    t2 = transition(FLOW, t.state, TimerFired("human", "triage", 1), deadline)
    assert t2.state is not None and t2.state.status == "rejected"
    assert "by its deadline" in t2.state.reason


def test_engine_due_resends_what_the_state_implies() -> None:
    s = submit().state
    assert s is not None
    (task,) = tasks(due(FLOW, s, T0 + 3))
    assert task.task_id == "w1:triage:1" and task.deadline == T0 + 10
    waiting = step(s, T0 + 1, output={"intent": "legal"}).state
    assert waiting is not None
    (esc,) = [e for e in due(FLOW, waiting, T0 + 2) if isinstance(e, SendEscalation)]
    assert esc.escalation.id == "w1:triage:1:esc"


def test_engine_does_not_mutate_its_input_state() -> None:
    s = submit().state
    assert s is not None
    before = (s.history[0].status, dict(s.outputs), s.updated_at)
    step(s, T0 + 1, output={"intent": "billing"})
    assert (s.history[0].status, dict(s.outputs), s.updated_at) == before


@pytest.mark.parametrize("text, message", [
    ("name: x\nsteps: []", "at least 1"),
    ("name: x\nsteps: [{name: a, role: r}, {name: a, role: r}]", "unique"),
    ("name: x\nsteps: [{name: a, role: r, routes: [{when: 'true', to: nowhere}]}]", "unknown"),
    ("name: x\nsteps: [{name: a, role: r, when: 'output.[['}]", "not valid JMESPath"),
    ("name: x\nsteps: [{name: a, role: 'r.x'}]", "not a valid subject token"),
    ("name: x\nsteps: [{name: a, role: r, surprise: 1}]", "Extra inputs"),
    ("{", "invalid"),
])
def test_workflow_validation_rejects_bad_definitions(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_workflow(text)


def test_engine_holds_a_call_for_approval_then_reruns_the_step_under_the_decision() -> None:
    s = submit().state
    assert s is not None
    s = step(s, T0 + 1, output={"intent": "billing"}).state
    assert s is not None
    # the digest the agent states is not believed: the engine's is of the call shown
    call = {"tool": "kb_search", "args": {"q": "x"}, "digest": "d-of-another-call"}
    d1 = call_digest("kb_search", {"q": "x"})
    t = step(s, T0 + 2, status="needs_human", output={"approval": call}, confidence=0.0)
    assert t.state is not None and t.state.escalation is not None
    (esc,) = [e.escalation for e in t.effects if isinstance(e, SendEscalation)]
    assert (esc.kind, esc.output) == ("approval", {"approval": call})
    assert t.state.escalation.call_digest == d1
    ok = Decision(escalation_id=esc.id, workflow_id="w1", action="approve", reviewer="ann",
                  decided_at=T0 + 3)
    t2 = transition(FLOW, t.state, DecisionReceived(ok), T0 + 3)
    (task,) = tasks(t2.effects)
    assert (task.step, task.attempt, task.approved) == ("answer", 2, {d1: "ann"})
    assert t2.state is not None and t2.state.approved == {d1: "ann"}
    # the same kind of hold, rejected: the step runs again and the call is refused
    d2 = call_digest("kb_search", {"q": "z"})
    t3 = step(t2.state, T0 + 4, status="needs_human",
              output={"approval": {**call, "args": {"q": "z"}}})
    assert t3.state is not None and t3.state.escalation is not None
    no = Decision(escalation_id=t3.state.escalation.id, workflow_id="w1", action="reject",
                  reviewer="bob", decided_at=T0 + 5)
    t4 = transition(FLOW, t3.state, DecisionReceived(no), T0 + 5)
    (task,) = tasks(t4.effects)
    assert (task.attempt, task.declined, task.approved) == (3, [d2], {d1: "ann"})
    assert t4.state is not None and t4.state.status == "running"


def test_engine_approves_a_held_call_with_a_persons_arguments_in_its_place() -> None:
    s = submit().state
    assert s is not None
    s = step(s, T0 + 1, output={"intent": "billing"}).state
    assert s is not None
    call = {"tool": "kb_search", "args": {"q": "x"}}
    d1 = call_digest("kb_search", {"q": "x"})
    t = step(s, T0 + 2, status="needs_human", output={"approval": call}, confidence=0.0)
    assert t.state is not None and t.state.escalation is not None
    edit = Decision(escalation_id=t.state.escalation.id, workflow_id="w1", action="edit",
                    reviewer="ann", output={"args": {"q": "y"}}, decided_at=T0 + 3)
    t2 = transition(FLOW, t.state, DecisionReceived(edit), T0 + 3)
    (task,) = tasks(t2.effects)
    edited = call_digest("kb_search", {"q": "y"})
    assert (task.attempt, task.approved, task.declined) == (2, {edited: "ann"}, [d1])
    assert task.replaced == {d1: {"q": "y"}}  # the agent sends these in place of the held call
    # an edit without arguments approves the held call as it is
    plain = Decision(escalation_id=t.state.escalation.id, workflow_id="w1", action="edit",
                     reviewer="ann", output={"note": "fine"}, decided_at=T0 + 3)
    (task,) = tasks(transition(FLOW, t.state, DecisionReceived(plain), T0 + 3).effects)
    assert (task.approved, task.declined, task.replaced) == ({d1: "ann"}, [], {})


@pytest.mark.parametrize("rule", ["reject", "re_escalate"])
def test_engine_approval_deadline_follows_the_rule(rule: str) -> None:
    wf = FLOW.model_copy(update={"approval_deadline_s": 60.0, "on_approval_timeout": rule})
    req = WorkflowRequest(id="w1", workflow="flow", input={"text": "x"}, submitted_at=T0)
    s = transition(wf, None, Submitted(req), T0).state
    assert s is not None
    call = {"tool": "refund", "args": {"amount": 500}, "digest": "d9"}
    held = transition(wf, s, ResultReceived(result(s, status="needs_human",
                                                     output={"approval": call})), T0 + 1)
    assert held.state is not None and held.state.timer_at == T0 + 61  # the approval deadline
    late = transition(wf, held.state, TimerFired("human", "triage", 1), T0 + 61)
    assert late.state is not None and "escalation.expired" in events(late)
    if rule == "reject":  # nobody approved: the step runs again and the call is refused
        (task,) = tasks(late.effects)
        assert (task.attempt, task.declined) == (2, [call_digest("refund", {"amount": 500})])
    else:  # the same exact call goes to a person again, under a new escalation id
        (esc,) = [e.escalation for e in late.effects if isinstance(e, SendEscalation)]
        assert esc.id == "w1:triage:1:esc:r1" and esc.output == {"approval": call}
        assert late.state.status == "waiting_human" and not tasks(late.effects)


async def test_policy_defaults_fill_the_approval_rules_of_a_workflow() -> None:
    from switchyard.supervisor.catalog import WorkflowCatalog
    from switchyard.supervisor.policy import parse_policy

    policy = parse_policy(
        "approval_deadline_s: 900\non_approval_timeout: re_escalate\n"
        "tools: {kb_search: {}}\n"
        "roles: {writer: {tools: [kb_search]}, senior_writer: {tools: [kb_search]}}\n"
    )
    own = FLOW.model_copy(update={"approval_deadline_s": 60.0})
    wf = await WorkflowCatalog({"flow": own}, policy=policy).latest("flow")
    assert wf is not None  # its own deadline stays; the timeout rule comes from the policy
    assert (wf.approval_deadline_s, wf.on_approval_timeout) == (60.0, "re_escalate")


def test_a_task_carries_only_the_context_its_step_asks_for() -> None:
    wf = parse_workflow("""
name: ctx
steps:
  - {name: a, role: r}
  - {name: b, role: r}
  - {name: c, role: r, context: [input, a]}
  - {name: d, role: r, context: ["*"]}
""")
    inp, outputs = {"text": "x" * 100}, {"a": {"n": 1}, "b": {"n": 2}}
    assert wf.step("b").context_of(inp, outputs) == {}
    assert wf.step("c").context_of(inp, outputs) == {"input": inp, "steps": {"a": {"n": 1}}}
    assert wf.step("d").context_of(inp, outputs) == {"input": inp, "steps": outputs}
    with pytest.raises(ConfigError, match="context names no step"):
        parse_workflow("name: bad\nsteps:\n  - {name: a, role: r, context: [nope]}\n")
