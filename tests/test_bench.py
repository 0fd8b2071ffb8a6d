"""``switchyard bench`` runs every pipeline for real and reports what it promises. It asserts the
shape and the accounting, never a speed: speed goals are met in the benchmark itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from switchyard.bench import Plan, busy_seconds, cpu_seconds, report_json, rss_bytes, run_bench

TINY = Plan(inflight=[1, 8], count={1: 10, 8: 40}, windows=1, syncs=["default"], growth_steps=10,
            growth_payload=20_000, growth_count=20, parked=30)


def test_bench_procfs_readings_are_sane() -> None:
    import os

    assert cpu_seconds(os.getpid()) > 0
    assert rss_bytes(os.getpid()) > 10 * 2**20
    assert busy_seconds() > 0


@pytest.mark.e2e
async def test_bench_measures_all_three_pipelines_side_by_side() -> None:
    logged: list[str] = []
    report = await run_bench(TINY, logged.append)
    pipelines = {(r.pipeline, r.inflight) for r in report.rows if r.steps == 5}
    for name in ("raw-core", "raw-jetstream", "switchyard"):
        assert {(name, 1), (name, 8)} <= pipelines
    sy = next(r for r in report.rows if r.pipeline == "switchyard" and r.inflight == 8)
    assert sy.workflows_per_s > 0 and sy.p99_ms >= sy.p50_ms > 0
    assert {"nats-server", "supervisor", "agent-hop1", "agent-hop5", "bench"} <= set(
        sy.cpu_us_per_workflow)
    assert sy.peak_rss_mb["supervisor"] > 0 and sy.windows == 1
    assert "throughput_vs_raw_jetstream_64_default" not in report.ratios  # 64 was not run
    growth = report.growth["cpu_us_per_step"]
    assert set(growth) == {"5 steps, 1 KB", "10 steps, 1 KB", "5 steps, 20 KB"}
    assert report.growth["parked_workflows"] == 30 and report.growth["supervisor_rss_mb_parked"] > 0
    # counted on the server: 2 per step (the task, the result on the journal) and 2 per
    # workflow (the submission, the outcome): 12 for 5 steps
    assert report.stored_writes_per_step["switchyard"] == 2.4
    by_stream = report.stored_writes_per_step["switchyard_by_stream"]
    assert set(by_stream) == {f"{p}_{n}" for p in {k.rsplit("_", 1)[0] for k in by_stream}
                              for n in ("JOURNAL", "TASKS", "OUTCOMES")}
    assert {k.rsplit("_", 1)[1]: v for k, v in by_stream.items()} == {
        "JOURNAL": 1.2, "TASKS": 1.0, "OUTCOMES": 0.2}
    two = [r for r in report.rows if r.pipeline == "switchyard-2-supervisors"]
    assert two and two[0].workflows_per_s > 0 and {"supervisor", "supervisor-2"} <= set(
        two[0].cpu_us_per_workflow)
    assert json.loads(report_json(report))["rows"]


def test_bench_cli_writes_json(tmp_path: Path) -> None:
    cli = str(Path(sys.executable).parent / "switchyard")
    res = subprocess.run([cli, "bench", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--quick" in res.stdout and "--json" in res.stdout


async def test_bench_marks_a_row_measured_on_a_busy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """When other programs disturb every window, the row is reported (the quietest window),
    marked, and no statistics error escapes (it used to: ``no median for empty data``)."""
    import os

    from switchyard.bench import Driver, measure
    from switchyard.bench import run as bench_run

    class Idle(Driver):
        async def run(self, count: int, inflight: int) -> list[float]:
            return [0.001] * count

    monkeypatch.setattr(bench_run, "OTHER_CPU_LIMIT", -1.0)  # every window counts as disturbed
    row = await measure("idle", "default", Idle(), {"me": os.getpid()}, inflight=1, count=5,
                        windows=2)
    assert row.busy_machine and row.windows == 1 and row.rejected_windows == 6
    assert row.workflows_per_s > 0


@pytest.mark.e2e
async def test_soak_samples_the_real_stack_at_a_fixed_rate(tmp_path: Path) -> None:
    from switchyard.bench.soak import run_soak

    logged: list[str] = []
    report = await run_soak(rate=4, duration=4, trail_max_age=60, every=2, log=logged.append,
                            tmp=tmp_path)
    assert report.lost == 0, report.outcomes
    assert len(report.samples) >= 3 and len(logged) == len(report.samples)
    last = report.samples[-1]
    assert last.finished == last.submitted >= 12  # the last sample is taken once all ended
    assert last.journal_msgs > last.submitted  # submissions and results
    assert {"nats-server", "supervisor", "agent-triage"} <= set(last.rss_mb)
    assert report.journal_bytes_per_workflow > 0


async def test_bench_measures_what_tracing_costs_with_and_without_an_exporter(
    tmp_path: Path,
) -> None:
    from switchyard.bench.run import Report
    from switchyard.bench.telemetry import VARIANTS, bench_telemetry
    from switchyard.natsd import NatsServer

    report = Report(machine={})
    logged: list[str] = []
    async with NatsServer(store_dir=tmp_path / "nats", sync_always=False) as server:
        await bench_telemetry(report, server.url, server.pid or 0, "default", TINY, tmp_path,
                              logged.append)
    assert [r.pipeline for r in report.rows] == [name for name, _ in VARIANTS]
    assert all(r.workflows_per_s > 0 and r.inflight == 8 for r in report.rows)
    assert {"tracing_api_cost_pct_8_default", "tracing_otlp_cost_pct_8_default",
            "tracing_noise_cost_pct_8_default"} <= set(
        report.ratios)
    exports = report.growth["otlp_exports"]
    assert exports["requests"] > 0 and exports["bytes"] > 0  # the exporting variant's spans arrived
