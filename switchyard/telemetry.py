"""The OpenTelemetry SDK for one process, when the ``telemetry`` extra is installed and the
standard ``OTEL_*`` variables configure an exporter (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_TRACES_EXPORTER=none`` turns it off). The SDK and
its OTLP/HTTP exporter read those variables themselves (endpoint, headers, sampler,
``OTEL_SERVICE_NAME``); nothing is sent anywhere else, and without them nothing at all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context

from switchyard.protocol.bus import tracing
from switchyard.protocol.bus.tracing import FORCED_SPAN_ID, FORCED_TRACE_ID

log = structlog.get_logger("switchyard.telemetry")


def start_tracing(service: str, *, exporter: bool) -> Callable[[], None] | None:
    """Install the SDK with the OTLP/HTTP exporter; returns what flushes and stops it, or None
    when nothing is configured or the extra is not installed."""
    if not exporter:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    except ImportError:
        log.warning("telemetry.not_installed",
                    hint="an OTLP endpoint is set but the SDK is not: pip install "
                         "'switchyard[telemetry]'")
        return None

    class _Ids(RandomIdGenerator):
        """Random ids, except the run's root, whose span id is derived from its workflow id."""

        def generate_span_id(self) -> int:
            return FORCED_SPAN_ID.get() or super().generate_span_id()

        def generate_trace_id(self) -> int:
            return FORCED_TRACE_ID.get() or super().generate_trace_id()

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}),
                              id_generator=_Ids())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    tracing.sample_roots(root_sampler(provider.sampler))
    return provider.shutdown


def root_sampler(sampler: Any) -> Callable[[int], bool]:
    """The SDK's sampler (``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``) deciding on a run
    by its trace id, as for its root: every process derives the same answer, so with
    ``parentbased_traceidratio`` a run is traced whole or not at all."""
    from opentelemetry.sdk.trace.sampling import Decision

    def decide(trace_id: int) -> bool:
        result = sampler.should_sample(Context(), trace_id, "invoke_workflow")
        return bool(result.decision == Decision.RECORD_AND_SAMPLE)

    return decide
