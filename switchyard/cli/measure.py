"""Measuring: ``bench`` (Switchyard beside raw NATS) and ``chaos`` (the fault-injection suite)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from switchyard.cli.app import app, err, load_settings, out
from switchyard.loop import run as run_on_loop


@app.command()
def chaos(
    scenario: Annotated[list[str] | None, typer.Option(
        help="agents, supervisor, nats, poison, cluster (repeatable; default all)")] = None,
    scale: Annotated[str, typer.Option(help="ci (minutes) or full (the issue's sizes)")] = "ci",
    seed: Annotated[int, typer.Option(help="seeds the fault points and the kills")] = 1,
    json_file: Annotated[Path | None, typer.Option("--json", help="also write JSON here")] = None,
) -> None:
    """Run the real stack under named, seeded faults and count: submitted, completed, escalated,
    lost, duplicated side effects, faults fired. Exit 1 if any scenario lost or duplicated
    anything, or a fault it asked for never fired."""
    from switchyard.chaos import SCENARIOS, SIZES, reports_json, run_scenario

    load_settings()
    names = scenario or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or scale not in SIZES:
        err.print(f"[red]unknown scenario {unknown} or scale {scale!r}[/] "
                  f"(scenarios: {', '.join(SCENARIOS)}; scales: {', '.join(SIZES)})")
        raise typer.Exit(2)
    reports = []
    for name in names:
        err.print(f"· {name} ({scale}, seed {seed})")
        reports.append(asyncio.run(run_scenario(name, scale=scale, seed=seed)))
    table = Table(title="fault injection (acknowledged work only)")
    for col in ("scenario", "submitted", "acked", "completed", "escalated", "failed", "lost",
                "dup effects", "faults fired", "kills", "restarts", "s", "ok"):
        table.add_column(col)
    for r in reports:
        fired = ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in sorted(r.faults_fired.items()))
        table.add_row(r.scenario, str(r.submitted), str(r.acknowledged), str(r.completed),
                      str(r.escalated), str(r.failed), str(r.lost), str(r.duplicated_effects),
                      fired or "-", str(r.kills), str(r.restarts), f"{r.elapsed_s:.0f}",
                      "[green]yes[/]" if r.ok else "[red]NO[/]")
    out.print(table)
    for r in reports:
        if r.scenario == "poison":
            out.print(f"poison: {r.dead_lettered}/{r.bad_inputs} bad inputs dead-lettered with a "
                      f"reason; processes restarted: {len(r.processes_restarted)}")
        if r.scenario == "cluster":
            out.print(f"cluster: killed {r.killed}; first outcome {r.recovered_s:g} s after the "
                      f"kill; every replica current {r.caught_up_s:g} s after the restart",
                      markup=False)
        for problem in r.problems:
            out.print(f"[red]{r.scenario}: {problem}[/]")
    if json_file is not None:
        json_file.write_bytes(reports_json(reports))
    raise typer.Exit(0 if all(r.ok for r in reports) else 1)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="a smaller run, under a minute")] = False,
    json_file: Annotated[Path | None, typer.Option("--json", help="also write JSON here")] = None,
    only: Annotated[Literal["all", "telemetry"], typer.Option(
        help="telemetry: only what tracing costs (no spans, the API alone, the OTLP exporter)",
    )] = "all",
) -> None:
    """Measure Switchyard beside raw JetStream and raw core NATS, on a nats-server of its own."""
    from switchyard.bench import FULL, QUICK, report_json, run_bench
    from switchyard.bench.run import OTHER_CPU_LIMIT
    from switchyard.bench.telemetry import run_telemetry

    load_settings()
    plan, log = QUICK if quick else FULL, lambda m: err.print(f"· {m}")
    report = run_on_loop(run_telemetry(plan, log) if only == "telemetry" else run_bench(plan, log))
    table = Table(title="five-hop workflows (median of windows)")
    for col in ("pipeline", "fsync", "in flight", "steps", "payload", "wf/s", "p50 ms", "p99 ms",
                "CPU µs/wf", "CPU µs/step", "other CPU %"):
        table.add_column(col, justify="right" if col not in ("pipeline", "fsync") else "left")
    for r in report.rows:
        table.add_row(r.pipeline, r.sync, str(r.inflight), str(r.steps),
                      f"{r.payload_bytes // 1024} KB", f"{r.workflows_per_s:,.0f}",
                      f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                      f"{sum(r.cpu_us_per_workflow.values()):,.0f}", f"{r.cpu_us_per_step:,.0f}",
                      f"{r.other_cpu_pct:.0f}" + (" (busy)" if r.busy_machine else ""))
    (out if out.is_terminal else Console(width=160)).print(table)
    busy = [r for r in report.rows if r.busy_machine]
    if busy:
        out.print(f"{len(busy)} row(s) marked (busy): other programs used more than "
                  f"{OTHER_CPU_LIMIT:.0%} of the CPU in every window, so the quietest window is "
                  "shown; run again on a quieter machine to compare them.", markup=False)
    for k, v in {**report.ratios, **report.growth}.items():
        out.print(f"{k}: {v}", markup=False)
    if json_file is not None:
        json_file.write_bytes(report_json(report) + b"\n")
        out.print(f"wrote {json_file}")


@app.command()
def soak(
    rate: Annotated[float, typer.Option(help="workflows submitted per second", min=0.1)] = 60.0,
    duration: Annotated[float, typer.Option(help="seconds of load", min=1)] = 600.0,
    trail_max_age: Annotated[float, typer.Option(
        help="seconds journals and outcomes are kept (short, so the plateau shows)", min=1)] = 120.0,
    every: Annotated[float, typer.Option(help="seconds between samples", min=1)] = 30.0,
    json_file: Annotated[Path | None, typer.Option("--json", help="also write JSON here")] = None,
) -> None:
    """The real stack at a fixed rate for a long while: memory of every process, the server's
    store and the journal, sampled, to show where they level off."""
    import tempfile

    from switchyard.bench.soak import report_json, run_soak

    load_settings()
    with tempfile.TemporaryDirectory(prefix="switchyard-soak-") as tmp:
        report = run_on_loop(run_soak(rate, duration, trail_max_age, every,
                                      lambda m: err.print(f"· {m}"), Path(tmp)))
    table = Table(title=f"soak: {rate:g} workflows/s for {duration:g} s, trail kept "
                        f"{trail_max_age:g} s")
    names = list(report.samples[0].rss_mb) if report.samples else []
    for col in ("s", "done", *(f"{n} MB" for n in names), "store MB", "journal msgs",
                "journal MB"):
        table.add_column(col, justify="right")
    for x in report.samples:
        table.add_row(f"{x.at_s:.0f}", f"{x.finished}/{x.submitted}",
                      *(f"{x.rss_mb[n]:.0f}" for n in names), f"{x.store_mb:.1f}",
                      f"{x.journal_msgs:,}", f"{x.journal_mb:.1f}")
    (out if out.is_terminal else Console(width=200)).print(table)
    out.print(f"journal bytes per workflow: {report.journal_bytes_per_workflow:,.0f}; "
              f"outcomes: {report.outcomes}; lost: {report.lost}", markup=False)
    if json_file is not None:
        json_file.write_bytes(report_json(report) + b"\n")
        out.print(f"wrote {json_file}")
    raise typer.Exit(0 if report.lost == 0 else 1)
