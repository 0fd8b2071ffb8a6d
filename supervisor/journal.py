"""Folding a workflow's journal: the state is the engine run over the records, in order.

``fold`` takes one record (read against the one before it by ``protocol.journal.read``) and the
state so far, and gives the new state and the transition: the same function the supervisor runs
live and ``replay`` runs afterwards. ``replay`` checks that the engine, under the definitions it
is given, reproduces what was sent: every task a result answers, every escalation a decision
answers, every timer and notice the supervisor recorded, and the outcome.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from switchyard.protocol.errors import ConfigError
from switchyard.protocol.journal import Read
from switchyard.protocol.messages import (
    Decision,
    Notice,
    Outcome,
    Result,
    TimerFired,
    WorkflowRequest,
)
from switchyard.protocol.subjects import check_token
from switchyard.supervisor.engine import (
    TERMINAL,
    DecisionReceived,
    EngineEvent,
    ResultReceived,
    SendEscalation,
    SendOutcome,
    SendTask,
    Submitted,
    TaskDeadLettered,
    Transition,
    WorkflowState,
    transition,
)
from switchyard.supervisor.engine import TimerFired as TimerDue
from switchyard.supervisor.workflow import Workflow

SNAPSHOT_EVERY = 32

# how a fold finds a definition: (name, the run's definition digest, "" for a new run) -> it
Definitions = Callable[[str, str], Awaitable[Workflow | None]]


@dataclass(frozen=True)
class Folded:
    """A workflow's journal folded up to the record at ``seq`` (0: nothing yet)."""

    state: WorkflowState | None
    seq: int = 0
    head: str = ""


def engine_event(read: Read) -> EngineEvent | None:
    m = read.message
    if isinstance(m, WorkflowRequest):
        return Submitted(m)
    if isinstance(m, Result):
        return ResultReceived(m)
    if isinstance(m, Decision):
        return DecisionReceived(m)
    if isinstance(m, TimerFired):
        return TimerDue(m.kind, m.step, m.attempt, m.round)
    if isinstance(m, Notice):
        return TaskDeadLettered(m.step, m.attempt, m.reason)
    return None


async def definition_for(
    folded: Folded, read: Read, definitions: Definitions, *, started_with: str = "",
) -> Workflow | None:
    """The definition the record is folded under: for a submission the latest (or, replaying a
    finished run, the one its outcome names), else the one the run started with."""
    if isinstance(read.message, WorkflowRequest):
        try:
            check_token("workflow", read.message.workflow)
            return await definitions(read.message.workflow, started_with)
        except ConfigError:  # not a name, or a definition the policy refuses
            return None
    if folded.state is None:
        return None
    return await definitions(folded.state.workflow, folded.state.definition)


def fold(wf: Workflow | None, folded: Folded, read: Read) -> tuple[Folded, Transition]:
    """One more record. A refused record changes no state, but the fold moves past it."""
    rec = read.record
    event = engine_event(read) if read.ok else None
    if event is None:
        t = Transition(folded.state, ignored=read.refused or "not an input")
    else:
        t = transition(wf, folded.state, event, rec.at)
    state = t.state
    if state is not None:
        inputs = state.inputs + 1
        state = msgspec.structs.replace(
            state, seq=rec.seq, head=rec.digest, inputs=inputs,
            # every replica's fold knows whether a snapshot was due, so the one that folds the
            # end writes the last one (with its TTL), whoever wrote the first
            snapshot=state.snapshot or snapshot_due(state, inputs))
        t.state = state
        # the outcome names the record that ended the run
        t.effects = [SendOutcome(msgspec.structs.replace(
            e.outcome, journal_seq=rec.seq, journal_head=rec.digest))
            if isinstance(e, SendOutcome) else e for e in t.effects]
    return Folded(state, rec.seq, rec.digest), t


def snapshot_due(state: WorkflowState, inputs: int) -> bool:
    """A snapshot is written when a run waits (a person, a retry) and every 32 inputs."""
    waits = state.status == "waiting_human" or state.timer_kind == "retry"
    return state.status not in TERMINAL and (waits or inputs % SNAPSHOT_EVERY == 0)


@dataclass
class Step:
    """One record of a replay and what the engine made of it."""

    read: Read
    transition: Transition


@dataclass
class Replay:
    steps: list[Step] = field(default_factory=list)
    state: WorkflowState | None = None
    divergence: str = ""  # the first record where the replay departs from what was sent
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.divergence


async def replay(
    reads: Iterable[Read], definitions: Definitions, outcome: Outcome | None = None,
) -> Replay:
    """Fold the records again and check each input against what the fold had sent by then."""
    out = Replay()
    folded = Folded(None)
    tasks: dict[str, SendTask] = {}
    escalations: set[str] = set()
    ended = 0  # the record whose fold sent the outcome
    started_with = outcome.definition if outcome is not None else ""
    for read in reads:
        wf = await definition_for(folded, read, definitions, started_with=started_with)
        before = folded.state
        folded, t = fold(wf, folded, read)
        out.steps.append(Step(read, t))
        why = _unexplained(read, before, t, tasks, escalations)
        if why and not out.divergence:
            out.divergence = f"seq {read.record.seq} ({read.kind}): {why}"
        for effect in t.effects if t.changed else []:
            if isinstance(effect, SendTask):
                tasks[effect.task_id] = effect
            elif isinstance(effect, SendEscalation):
                escalations.add(effect.escalation.id)
            elif isinstance(effect, SendOutcome):
                ended = read.record.seq
    out.state = folded.state
    if outcome is not None and not out.divergence:
        out.divergence = _outcome_differs(folded, ended, outcome)
    if outcome is not None and out.state is not None and outcome.definition \
            and outcome.definition != out.state.definition:
        out.notes.append(f"the run finished under definition {outcome.definition}; this replay "
                         f"used {out.state.definition or 'none'}")
    return out


def _unexplained(
    read: Read, before: WorkflowState | None, t: Transition, tasks: dict[str, SendTask],
    escalations: set[str],
) -> str:
    """Why this input could not have followed from what the fold sent ("" if it could)."""
    m = read.message
    if not read.ok or m is None:
        return ""  # refused by the journal's rules; ``read_all`` reports it
    if isinstance(m, Result):
        sent = tasks.get(m.task_id)
        if sent is None:
            known = ", ".join(tasks) or "none"
            return f"a result for task {m.task_id}, which the replay never sent (it sent {known})"
        if (sent.step, sent.attempt) != (m.step, m.attempt):
            return f"a result for task {m.task_id} names step {m.step} attempt {m.attempt}"
        if m.role != sent.role:
            return f"a result from role {m.role} for a task of role {sent.role}"
    elif isinstance(m, Decision):
        if m.escalation_id not in escalations:
            return f"a decision on {m.escalation_id}, an escalation the replay never raised"
    elif isinstance(m, TimerFired):
        if not t.changed:  # the supervisor records a timer only when its fold says it is due
            state = before.status if before else "nothing"
            return (f"the supervisor's {m.kind} timer for step {m.step} attempt {m.attempt}, "
                    f"which the replay does not have set ({state}: {t.ignored})")
    elif isinstance(m, Notice):
        if not any(s.step == m.step and s.attempt == m.attempt for s in tasks.values()):
            return f"a notice about step {m.step} attempt {m.attempt}, a task never sent"
    return ""


def _outcome_differs(folded: Folded, ended: int, outcome: Outcome) -> str:
    s = folded.state
    if s is None or s.status not in TERMINAL:
        return (f"the outcome says {outcome.status}, but the replay ends "
                f"{s.status if s else 'with no run'}")
    if s.status != outcome.status:
        return f"the outcome says {outcome.status}, the replay {s.status}"
    if outcome.journal_seq and outcome.journal_seq != ended:
        return (f"the outcome was sent after seq {outcome.journal_seq}, the replay ends the run "
                f"at seq {ended}")
    if s.output != outcome.output:
        return "the outcome's output differs from the replay's"
    return ""
