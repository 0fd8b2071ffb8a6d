"""The supervisor's spans known only once they are over (see ``protocol.bus.tracing``)."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind

from switchyard.protocol.bus import tracing
from switchyard.protocol.journal import Read, Record
from switchyard.protocol.messages import Decision
from switchyard.protocol.subjects import Durable
from switchyard.supervisor.engine import TERMINAL, WorkflowState, ended_wait


def decision_span(workflow_id: str, read: Read, record: Record,
                  decided: list[str]) -> AbstractContextManager[Span]:
    """What the supervisor did with one journal input, under the run's root: the tasks and
    escalations it sends carry this span's ``traceparent``."""
    if not tracing.active():
        return contextlib.nullcontext(INVALID_SPAN)
    return tracing.TRACER.start_as_current_span(
        f"process {read.kind}", context=tracing.workflow_context(workflow_id),
        kind=SpanKind.CONSUMER, attributes={
            tracing.MESSAGING_SYSTEM: "nats", tracing.MESSAGING_DESTINATION: record.subject,
            tracing.MESSAGING_OPERATION_TYPE: "process",
            tracing.MESSAGING_CONSUMER_GROUP: Durable.JOURNAL,
            tracing.MESSAGING_MESSAGE_ID: str(record.seq), tracing.WORKFLOW_ID: workflow_id,
            "switchyard.decisions": decided})


def trace_waits_and_end(before: WorkflowState | None, after: WorkflowState, read: Read,
                        record: Record) -> None:
    """The spans known only once they are over: a person's wait (from the escalation to the
    decision or its deadline) and the run's root (from its submission to its end)."""
    if not tracing.active():
        return
    ended = int(record.stamp_ns)
    pending = ended_wait(before, after)
    if pending is not None:
        decision = read.message if isinstance(read.message, Decision) else None
        wait = tracing.TRACER.start_span(
            f"human_wait {pending.kind}", context=tracing.workflow_context(after.id),
            start_time=int(pending.created_at * 1e9) or ended, attributes={
                tracing.WORKFLOW_ID: after.id, "switchyard.escalation.id": pending.id,
                "switchyard.escalation.queue": pending.queue,
                "switchyard.decision.action": decision.action if decision else "expired"})
        wait.end(end_time=ended)
    if after.status in TERMINAL and (before is None or before.status not in TERMINAL):
        with tracing.as_root_of(after.id):
            root = tracing.TRACER.start_span(
                f"invoke_workflow {after.workflow}", context=Context(),
                start_time=int(after.created_at * 1e9), attributes={
                    tracing.GEN_AI_OPERATION: "invoke_workflow", tracing.WORKFLOW_ID: after.id,
                    "switchyard.workflow.status": after.status})
        root.end(end_time=ended)
