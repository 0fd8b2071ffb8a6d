"""Model policies and budgets in the pure engine: which model a task names and why, escalation to
a stronger model before a person, ceilings, the over-budget path, spend in state and outcome."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.protocol import ErrorInfo, Result, WorkflowRequest
from switchyard.protocol.errors import ConfigError
from switchyard.protocol.messages import ModelCall, ModelUse, Usage
from switchyard.supervisor.engine import (
    DecisionReceived,
    ResultReceived,
    SendEscalation,
    SendOutcome,
    SendTask,
    Submitted,
    Transition,
    WorkflowState,
    due,
    transition,
)
from switchyard.supervisor.workflow import Workflow, parse_workflow

T0 = 1000.0


def flow(extra: str = "", budget: str = "") -> Workflow:
    return parse_workflow(f"""
name: llm
{budget}
steps:
  - name: triage
    role: triage
    threshold: 0.6
    model:
      use: small
      rules:
        - when: "length(input.text) > `40`"
          use: large
          reason: long tickets go to the large model
      fallbacks: [backup, small]
      escalate_to: large
      call: {{tokens: 500}}
      budget: {{tokens: 2000, cost_usd: 0.5}}
  - name: answer
    role: writer
    {extra}
""")


def submit(wf: Workflow, text: str = "short") -> Transition:
    req = WorkflowRequest(id="w1", workflow=wf.name, input={"text": text}, submitted_at=T0)
    return transition(wf, None, Submitted(req), T0)


def task(t: Transition) -> SendTask:
    (sent,) = [e for e in t.effects if isinstance(e, SendTask)]
    return sent


def answered(wf: Workflow, s: WorkflowState, model: str, confidence: float = 0.9,
             tokens: tuple[int, int] = (100, 50), cost: float = 0.01, status: str = "ok",
             error: ErrorInfo | None = None, output: dict[str, Any] | None = None) -> Transition:
    usage = Usage(input_tokens=tokens[0], output_tokens=tokens[1], cost_usd=cost, model=model,
                  calls=1, latency_ms=12.5)
    r = Result(task_id=f"w1:{s.current}:{s.attempt}", workflow_id="w1", step=s.current,
               role=s.role, attempt=s.attempt, status=status,  # type: ignore[arg-type]
               output=output if output is not None else {"intent": "billing"},
               confidence=confidence, usage=usage, error=error,
               model=ModelUse(model=model, reason="r", calls=[ModelCall(
                   model=model, input_tokens=tokens[0], output_tokens=tokens[1],
                   cost_usd=cost)]))
    t = transition(wf, s, ResultReceived(r), T0 + 1)
    assert t.state is not None
    return t


def test_the_task_names_the_steps_model_its_fallbacks_ceilings_and_why() -> None:
    t = submit(flow())
    plan = task(t).model
    assert plan is not None
    assert (plan.models, plan.reason) == (["small", "backup"], "the step's model")
    assert (plan.call.tokens, plan.left.tokens, plan.left.cost_usd) == (500, 2000, 0.5)
    dispatched = t.entries[-1].data
    assert (dispatched["model"], dispatched["model_reason"]) == ("small", "the step's model")
    long = task(submit(flow(), "a ticket that goes on for quite a while, past forty"))
    assert long.model is not None
    assert long.model.models == ["large", "backup", "small"]
    assert long.model.reason == "long tickets go to the large model"


def test_a_step_without_a_policy_in_a_run_without_a_budget_gets_no_plan() -> None:
    wf = flow()
    s = submit(wf).state
    assert s is not None
    assert task(answered(wf, s, "small")).model is None


def test_a_low_confidence_result_is_tried_once_on_the_stronger_model_then_escalated() -> None:
    wf = flow()
    s = submit(wf).state
    assert s is not None
    t = answered(wf, s, "small", confidence=0.3)
    retried = task(t)
    assert retried.attempt == 2 and retried.model is not None
    assert retried.model.models[0] == "large" and "escalated to large" in retried.model.reason
    assert [e.type for e in t.entries][-2:] == ["step.model_escalated", "step.dispatched"]
    assert t.state is not None
    again = answered(wf, t.state, "large", confidence=0.4)
    (esc,) = [e.escalation for e in again.effects if isinstance(e, SendEscalation)]
    assert esc.kind == "low_confidence" and "0.40 is below the threshold 0.60" in esc.reason


def test_a_stronger_models_good_result_goes_on_and_a_fallback_to_it_is_not_retried() -> None:
    wf = flow()
    s = submit(wf).state
    assert s is not None
    t = answered(wf, s, "small", confidence=0.3)
    assert t.state is not None
    ok = answered(wf, t.state, "large", confidence=0.9)
    assert task(ok).step == "answer"
    s2 = submit(wf).state
    assert s2 is not None
    # the large model already answered (a fallback): under the threshold it goes to a person
    direct = answered(wf, s2, "large", confidence=0.3)
    assert [e.escalation.kind for e in direct.effects if isinstance(e, SendEscalation)] == [
        "low_confidence"]


def test_spend_is_summed_into_state_trace_entries_and_the_outcome() -> None:
    wf = flow()
    s = submit(wf).state
    assert s is not None
    t = answered(wf, s, "small", tokens=(100, 20), cost=0.01)
    entry = t.entries[0].data
    assert (entry["model"], entry["input_tokens"], entry["cost_usd"]) == ("small", 100, 0.01)
    assert t.state is not None
    done = answered(wf, t.state, "w", tokens=(40, 10), cost=0.002, output={"reply": "x"})
    assert done.state is not None and done.state.status == "completed"
    (outcome,) = [e.outcome for e in done.effects if isinstance(e, SendOutcome)]
    assert (outcome.usage.input_tokens, outcome.usage.output_tokens, outcome.usage.calls) == (
        140, 30, 2)
    assert outcome.usage.cost_usd == pytest.approx(0.012)
    assert [x.usage.cost_usd if x.usage else None for x in outcome.steps] == [0.01, 0.002]
    assert done.entries[-1].data["cost_usd"] == pytest.approx(0.012)


def test_over_the_workflow_budget_it_stops_when_the_definition_says_stop() -> None:
    wf = flow(budget="budget: {cost_usd: 0.05}\non_over_budget: stop")
    s = submit(wf).state
    assert s is not None
    t = answered(wf, s, "small", cost=0.06)
    assert t.state is not None and t.state.status == "failed"
    assert "over budget: the workflow has used 0.060000 of its 0.05 USD" in t.state.reason
    assert "workflow.over_budget" in [e.type for e in t.entries]
    assert not [e for e in t.effects if isinstance(e, SendTask)]  # no further model call


def test_over_budget_escalates_and_an_approval_lets_it_go_on() -> None:
    wf = flow(budget="budget: {tokens: 100}")
    s = submit(wf).state
    assert s is not None
    assert task(submit(wf)).model is not None
    t = answered(wf, s, "small", tokens=(90, 30))
    (esc,) = [e.escalation for e in t.effects if isinstance(e, SendEscalation)]
    assert esc.kind == "over_budget" and "120 of its 100 tokens" in esc.reason
    assert t.state is not None
    assert due(wf, t.state, T0 + 2)  # re-derived after a crash like any escalation
    from switchyard.protocol import Decision

    d = Decision(escalation_id=esc.id, workflow_id="w1", action="approve", reviewer="ann",
                 decided_at=T0 + 3)
    go = transition(wf, t.state, DecisionReceived(d), T0 + 3)
    sent = task(go)
    # the ceiling once more (a waiver is bounded): 2 x 100 - 120
    assert sent.step == "answer" and sent.model is not None and sent.model.left.tokens == 80


def test_an_agents_refusal_on_a_ceiling_takes_the_budget_path_not_a_retry() -> None:
    wf = flow(budget="on_over_budget: stop")
    s = submit(wf).state
    assert s is not None
    t = answered(wf, s, "small", status="error", tokens=(0, 0), cost=0.0, error=ErrorInfo(
        code="model_budget", message="the call needs up to 600 tokens but the call has 500 left"))
    assert t.state is not None and t.state.status == "failed"
    assert "600 tokens" in t.state.reason


def test_the_step_budget_counts_every_attempt_of_the_step() -> None:
    wf = flow()
    s = submit(wf).state
    assert s is not None
    first = answered(wf, s, "small", confidence=0.1, tokens=(900, 300))  # 1200 of 2000
    assert first.state is not None and task(first).model is not None
    assert task(first).model.left.tokens == 800  # type: ignore[union-attr]
    second = answered(wf, first.state, "large", confidence=0.2, tokens=(700, 200))  # 2100
    (esc,) = [e.escalation for e in second.effects if isinstance(e, SendEscalation)]
    assert esc.kind == "low_confidence"  # tried on the stronger model: now a person
    assert second.state is not None and second.state.spend.tokens == 2100


def test_a_waiver_resumes_the_step_at_its_next_attempt_with_its_model_and_a_new_ceiling() -> None:
    from switchyard.protocol import Decision

    wf = flow(budget="budget: {tokens: 1000}")
    s = submit(wf).state
    assert s is not None
    low = answered(wf, s, "small", confidence=0.1, tokens=(900, 200))  # 1100 of 1000
    assert low.state is not None
    (esc,) = [e.escalation for e in low.effects if isinstance(e, SendEscalation)]
    assert esc.kind == "over_budget" and esc.id == "w1:triage:1:esc:budget0"
    d = Decision(escalation_id=esc.id, workflow_id="w1", action="approve", reviewer="ann",
                 decided_at=T0 + 2)
    go = transition(wf, low.state, DecisionReceived(d), T0 + 2)
    sent = task(go)
    assert sent.task_id == "w1:triage:2"  # a new attempt: never a task id already sent
    assert sent.model is not None and sent.model.models[0] == "large"  # the escalation's model
    assert sent.model.left.tokens == 900  # the run's ceiling once more: 2000 - 1100
    assert go.state is not None and go.state.waivers == 1
    again = answered(wf, go.state, "large", confidence=0.9, tokens=(800, 200))  # 2100 of 2000
    (esc2,) = [e.escalation for e in again.effects if isinstance(e, SendEscalation)]
    assert esc2.kind == "over_budget" and esc2.id == "w1:answer:0:esc:budget1" != esc.id


def test_a_definition_with_a_bad_model_name_or_rule_is_refused() -> None:
    with pytest.raises(ConfigError, match="model name"):
        parse_workflow("name: x\nsteps:\n  - {name: a, role: r, model: {use: 'no good'}}\n")
    with pytest.raises(ConfigError):
        parse_workflow("name: x\nsteps:\n  - {name: a, role: r, model: {use: m, rules: "
                       "[{when: 'length(', use: m}]}}\n")
    assert flow().model_names() == {"small", "large", "backup"}


def test_a_usage_that_would_lower_a_spend_does_not_decode() -> None:
    from switchyard.protocol import DecodeError, decode

    bad = (b'{"task_id": "w1:a:1", "workflow_id": "w1", "step": "a", "role": "r", "attempt": 1,'
           b' "status": "ok", "usage": {"input_tokens": -5000, "cost_usd": -1.0}}')
    with pytest.raises(DecodeError, match="input_tokens"):
        decode(bad, Result)


def test_a_definition_on_the_bus_naming_an_unknown_model_is_refused() -> None:
    from switchyard.supervisor.catalog import WorkflowCatalog

    with pytest.raises(ConfigError, match=r"names models the catalogue lacks: \['backup'"):
        WorkflowCatalog({"llm": flow()}, models=frozenset({"small", "large"}))
    assert WorkflowCatalog({"llm": flow()}, models=frozenset({"small", "large", "backup"}))
