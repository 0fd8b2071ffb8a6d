"""A ratio sampler keeps or drops whole runs: the run's root context carries the decision the
SDK's sampler makes on its trace id, so every process's spans under it agree."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from switchyard.protocol.bus import tracing
from switchyard.telemetry import root_sampler


@pytest.fixture
def ratio() -> Iterator[TracerProvider]:
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.25)))
    tracing.sample_roots(root_sampler(provider.sampler))
    try:
        yield provider
    finally:
        tracing.sample_roots(tracing._always)


def test_a_ratio_sampler_decides_per_run_and_every_span_of_the_run_follows(
    ratio: TracerProvider,
) -> None:
    tracer = ratio.get_tracer("test")
    kept = dropped = 0
    for n in range(400):
        wid = f"wf-{n}"
        ctx = tracing.workflow_context(wid)
        with tracer.start_as_current_span("process result", context=ctx) as span:
            recorded = span.is_recording()
            with tracer.start_as_current_span("invoke_agent triage") as child:
                assert child.is_recording() == recorded
        expect = TraceIdRatioBased(0.25).should_sample(None, tracing.trace_id(wid), "x")
        assert recorded == expect.decision.is_sampled()
        kept, dropped = kept + recorded, dropped + (not recorded)
    assert 60 < kept < 140 and dropped > 200  # about a quarter of the runs, whole


def test_without_an_sdk_every_run_is_marked_sampled() -> None:
    ctx = tracing.workflow_context("wf-1")
    from opentelemetry import trace

    assert trace.get_current_span(ctx).get_span_context().trace_flags.sampled
