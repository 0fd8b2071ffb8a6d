"""Traces: one per workflow run, across processes, through the OpenTelemetry API only.

Without an SDK installed and configured (``switchyard.telemetry``) every call here is the API's
no-op. With one, a run is one trace whose id is derived from the workflow id (as
``headers.traceparent_for`` has always derived it), so every process, a restarted supervisor and
a redelivered task all land in it:

- the root, ``invoke_workflow <name>``, has a span id derived from the workflow id too; the
  supervisor emits it when the run ends (from its start), and parents its own spans to it;
- each input the supervisor folds is a span (``process <kind>``) under the root, and the tasks it
  sends carry that span's ``traceparent`` (W3C, in the NATS headers);
- an agent's work on a task is ``invoke_agent <role>`` under it; its tool calls
  (``execute_tool <tool>``, and the tool host's own span under that) and model calls
  (``chat <model>``) are under the agent's;
- a wait for a person is ``human_wait <kind>``, from the escalation to the decision.

Attribute names come from the semantic conventions (messaging, GenAI). Message contents (a
model's messages, a tool call's arguments and result) are recorded only where the operator opts
in (``SWITCHYARD_TRACE_CONTENT=1``, which calls ``record_contents``), and then with personal data
taken out by the function it is given.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
# the ids the next span must have (the deterministic root): read by the SDK's id generator
FORCED_SPAN_ID: contextvars.ContextVar[int] = contextvars.ContextVar("switchyard_span_id",
                                                                    default=0)
FORCED_TRACE_ID: contextvars.ContextVar[int] = contextvars.ContextVar("switchyard_trace_id",
                                                                     default=0)

# attribute names (the semantic conventions' own, as strings: the API package does not ship
# them, and the conventions package is the SDK extra's)
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_DESTINATION = "messaging.destination.name"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_CONSUMER_GROUP = "messaging.consumer.group.name"
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_PROVIDER = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT = "gen_ai.tool.call.result"
WORKFLOW_ID = "switchyard.workflow.id"
# what the contents recorded pass through (None: no contents are recorded)
_CLEAN: Callable[[str], str] | None = None


def record_contents(clean: Callable[[str], str]) -> None:
    """This process records message contents on its spans (the operator's opt-in), each as JSON
    passed through ``clean`` (the PII redaction) first."""
    global _CLEAN
    _CLEAN = clean


def set_content(span: trace.Span, attribute: str, value: Any) -> None:
    """``value`` (bytes: JSON already) as the span's ``attribute``, where contents are recorded;
    else nothing."""
    if _CLEAN is not None and span.is_recording():
        text = value.decode(errors="replace") if isinstance(value, bytes) else json.dumps(
            value, default=str, ensure_ascii=False)
        span.set_attribute(attribute, _CLEAN(text))


def trace_id(workflow_id: str) -> int:
    return int(hashlib.blake2b(workflow_id.encode(), digest_size=16).hexdigest(), 16)


def root_span_id(workflow_id: str) -> int:
    return int(hashlib.blake2b(f"{workflow_id}:root".encode(), digest_size=8).hexdigest(), 16)


def sample_roots(decide: Callable[[int], bool]) -> None:
    """Whether a run's trace is sampled, by its trace id: the SDK's sampler, asked as for a span
    with no parent (``switchyard.telemetry``), so a ratio sampler keeps or drops whole runs."""
    global _SAMPLED
    _SAMPLED = decide


def _always(_: int) -> bool:
    return True


_SAMPLED: Callable[[int], bool] = _always


def workflow_context(workflow_id: str) -> Context:
    """The run's root as a parent: what the supervisor's spans hang from."""
    tid = trace_id(workflow_id)
    flags = TraceFlags(TraceFlags.SAMPLED if _SAMPLED(tid) else TraceFlags.DEFAULT)
    root = SpanContext(tid, root_span_id(workflow_id), is_remote=True, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(root))


def from_headers(headers: Mapping[str, str] | None) -> Context:
    """The parent a message's ``traceparent`` names (none: a fresh context)."""
    return _PROPAGATOR.extract(dict(headers or {}))


def traceparent() -> str:
    """The current span's ``traceparent`` ("" outside any span)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


class _Installed(trace.NoOpTracer):
    """The API's tracer once a tracer provider is installed (the SDK, by ``switchyard.telemetry``
    or by an application that embeds an agent); until then no spans at all. The API's own
    non-recording spans record nothing, yet cost the hot path: at 64 workflows in flight they
    took 14 % of the throughput (``switchyard bench --only telemetry``), the supervisor's loop
    being the bottleneck."""

    def __init__(self) -> None:
        self._real: trace.Tracer | None = None

    def _tracer(self) -> trace.Tracer | None:
        if self._real is None:
            if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
                return None
            self._real = trace.get_tracer("switchyard")
        return self._real

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        real = self._tracer()
        if real is None:
            return contextlib.nullcontext(trace.INVALID_SPAN)
        return real.start_as_current_span(*args, **kwargs)

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        real = self._tracer()
        return trace.INVALID_SPAN if real is None else real.start_span(*args, **kwargs)


class _Off(trace.NoOpTracer):
    """No spans at all, not even the API's non-recording ones (``switch_off``)."""

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return contextlib.nullcontext(trace.INVALID_SPAN)

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return trace.INVALID_SPAN


TRACER: trace.Tracer = _Installed()


def active() -> bool:
    """Whether spans are made at all (a provider installed, tracing not switched off): the hot
    path asks before it computes what a span would carry."""
    return isinstance(TRACER, _Installed) and TRACER._tracer() is not None


def switch_off() -> None:
    """This process makes no spans (``SWITCHYARD_TRACE=0``): what the benchmark measures the
    tracing's cost against."""
    global TRACER
    TRACER = _Off()


@contextlib.contextmanager
def as_root_of(workflow_id: str) -> Iterator[None]:
    """A span started without a parent in the block is the run's root: the trace and span ids
    derived from ``workflow_id`` (with the SDK's id generator, ``switchyard.telemetry``)."""
    span = FORCED_SPAN_ID.set(root_span_id(workflow_id))
    trace_ = FORCED_TRACE_ID.set(trace_id(workflow_id))
    try:
        yield
    finally:
        FORCED_SPAN_ID.reset(span)
        FORCED_TRACE_ID.reset(trace_)
