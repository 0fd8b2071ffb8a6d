"""The demo run: the local stack, a batch of sample tickets, a live view and a summary."""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
import nats
import yaml
from nats.aio.client import Client

from switchyard.client import SwitchyardClient
from switchyard.protocol.bus.component import servers
from switchyard.protocol.bus.provision import open_bucket
from switchyard.protocol.messages import Usage
from switchyard.protocol.subjects import Bucket
from switchyard.settings import Settings
from switchyard.stack import LocalStack, connect_running
from switchyard.supervisor.authz import CONSOLE
from switchyard.supervisor.store import Snapshots


def sample_tickets(path: Path | None = None) -> list[dict[str, Any]]:
    if path is not None:
        text = path.read_text()
    else:
        text = resources.files("switchyard").joinpath("data", "sample_tickets.yaml").read_text()
    tickets: list[dict[str, Any]] = yaml.safe_load(text)
    return tickets


@dataclass
class Run:
    ticket: str
    workflow_id: str
    expect: str
    expect_kind: str = ""
    status: str = "running"  # running | completed | escalated | rejected | failed
    reason: str = ""
    kind: str = ""
    steps: dict[str, float] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)

    @property
    def matched(self) -> bool:
        return self.status == self.expect and (not self.expect_kind or self.kind == self.expect_kind)


@dataclass
class DemoReport:
    tickets: int
    elapsed_s: float
    counts: dict[str, int]
    matched: int
    runs: list[Run]
    step_ms: dict[str, dict[str, float]]
    startup_s: float
    secure: bool = False
    violations: list[str] = field(default_factory=list)  # the bus's permission violations
    usage: Usage = field(default_factory=Usage)  # model use of every run, summed

    @property
    def ok(self) -> bool:
        return (self.counts.get("failed", 0) == 0 and self.counts.get("running", 0) == 0
                and not self.violations)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["usage"] = msgspec.to_builtins(self.usage)
        return d


async def run_demo(
    settings: Settings,
    tickets: list[dict[str, Any]],
    *,
    timeout: float = 120.0,
    on_progress: Any = None,
    secure: bool = False,
    connect: bool = False,
) -> DemoReport:
    """The demo on a stack of its own, or with ``connect`` on one already running at
    ``NATS_URL`` (a compose deployment, say), as the identity ``SWITCHYARD_NKEY_FILE`` names."""
    t0 = time.perf_counter()
    if connect:
        nc = await connect_running(settings, "works the tickets")
        try:
            return await _drive(nc, settings, tickets, timeout, on_progress, 0.0)
        finally:
            await nc.drain()
    async with LocalStack(settings, secure=secure) as stack:
        startup = time.perf_counter() - t0
        nc = await nats.connect(servers(stack.url), **stack.connect_options(CONSOLE))
        try:
            report = await _drive(nc, settings, tickets, timeout, on_progress, startup)
        finally:
            await nc.drain()
    report.secure, report.violations = secure, stack.violations()  # including at shutdown
    return report


async def _drive(
    nc: Client, settings: Settings, tickets: list[dict[str, Any]], timeout: float,
    on_progress: Any, startup: float,
) -> DemoReport:
    s = settings.subjects
    client = SwitchyardClient(nc, s)
    batch = uuid.uuid4().hex[:8]
    runs = {f"demo-{batch}-{t['id']}": Run(t["id"], f"demo-{batch}-{t['id']}", t["expect"],
                                           t.get("kind", ""))
            for t in tickets}
    started = time.perf_counter()
    workflow = "support-llm" if "support-llm" in settings.load_workflows() else "support"
    for t in tickets:
        await client.submit(
            workflow, {"text": t["text"], "customer_email": t.get("customer_email")},
            workflow_id=f"demo-{batch}-{t['id']}",
        )

    async def follow(run: Run) -> None:
        left = max(0.1, timeout - (time.perf_counter() - started))
        result = await client.wait(run.workflow_id, timeout=left)
        if result.status == "timeout":
            return
        run.status, run.reason = result.status, result.reason
        run.kind = result.kind
        if result.outcome is not None:
            run.steps = {t.step: round(t.duration_ms, 1) for t in result.outcome.steps
                         if t.status != "skipped"}
            run.usage = result.outcome.usage
        if on_progress is not None:
            on_progress(list(runs.values()))

    await asyncio.gather(*(follow(run) for run in runs.values()))
    elapsed = time.perf_counter() - started
    await _collect_timings(client, [r for r in runs.values() if not r.steps])
    counts: dict[str, int] = {}
    for run in runs.values():
        counts[run.status] = counts.get(run.status, 0) + 1
    per_step: dict[str, list[float]] = {}
    for run in runs.values():
        for step, ms in run.steps.items():
            per_step.setdefault(step, []).append(ms)
    step_ms = {
        step: {"p50": round(statistics.median(v), 1), "max": round(max(v), 1), "n": len(v)}
        for step, v in per_step.items()
    }
    return DemoReport(
        tickets=len(tickets), elapsed_s=round(elapsed, 3), counts=counts,
        matched=sum(r.matched for r in runs.values()), runs=list(runs.values()),
        step_ms=step_ms, startup_s=round(startup, 3),
        usage=functools.reduce(Usage.plus, (r.usage for r in runs.values()), Usage()),
    )


async def _collect_timings(client: SwitchyardClient, runs: list[Run]) -> None:
    """Step timings of runs that wait for a person: from their snapshots."""
    snapshots = Snapshots(await open_bucket(client.js, client.s.bucket(Bucket.WORKFLOWS)),
                          client.s.bucket(Bucket.WORKFLOWS))
    for run in runs:
        state = await snapshots.get(run.workflow_id)
        if state is None:
            continue
        run.usage = state.spend
        for r in state.history:
            if r.finished_at:
                run.steps[r.step] = round((r.finished_at - r.dispatched_at) * 1000, 1)


def report_json(report: DemoReport) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report.as_dict()), indent=2)
