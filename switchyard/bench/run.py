"""``switchyard bench``: Switchyard and the raw transport it sits on, measured in the same run.

Three five-hop pipelines, each as separate processes on a nats-server of the benchmark's own:

- ``switchyard``: the real stack: supervisor, tool host and five trivial agents, each run's state
  folded from its journal (``switchyard-2-supervisors``: the same with two supervisor replicas);
- ``raw-jetstream``: a driver publishes each hop's task to a work-queue stream, five workers consume
  with durable pull consumers and explicit acks and publish results to a stream the driver
  consumes (10 stored messages per workflow);
- ``raw-core``: the same five hops as core NATS request-reply.

Every hop decodes and re-encodes the same msgspec envelope. For each pipeline and load: workflows/s,
p50/p99 latency, CPU microseconds per workflow by process (procfs), peak RSS by process, and the CPU
other programs used in the window (a window where that is high is rejected and repeated); the
median of several windows is reported.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from switchyard.bench.drivers import Driver, RawCoreDriver, RawJetStreamDriver, SwitchyardDriver
from switchyard.bench.workers import HOPS, raw_subject
from switchyard.client import SwitchyardClient
from switchyard.loop import loop_factory
from switchyard.natsd import NatsServer
from switchyard.protocol import Subjects, Task, WorkflowRequest, codec
from switchyard.protocol.bus.journal import Journal
from switchyard.settings import Settings
from switchyard.stack import LocalStack, stop_processes

CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
OTHER_CPU_LIMIT = 0.25  # a window where other programs used more than this share is repeated


# procfs -----------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_bytes(pid: int, key: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def busy_seconds() -> float:
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


# rows -------------------------------------------------------------------------------------------


@dataclass
class Row:
    pipeline: str
    sync: str
    inflight: int
    steps: int
    payload_bytes: int
    workflows: int
    workflows_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_workflow: dict[str, float]
    cpu_us_per_step: float
    peak_rss_mb: dict[str, float]
    other_cpu_pct: float
    windows: int
    rejected_windows: int
    # every window had other programs above OTHER_CPU_LIMIT: the quietest one is reported
    busy_machine: bool = False


@dataclass
class Report:
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    growth: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, Any] = field(default_factory=dict)
    stored_writes_per_step: dict[str, Any] = field(default_factory=dict)


# measuring --------------------------------------------------------------------------------------


async def measure(
    name: str, sync: str, driver: Driver, pids: dict[str, int], *, inflight: int, count: int,
    windows: int, steps: int = HOPS, payload: int = 1024,
) -> Row:
    pids = {**pids, "bench": os.getpid()}
    await driver.run(min(count, 2 * inflight + 20), inflight)  # warm-up
    kept: list[tuple[float, list[float], dict[str, float], float]] = []
    busy: list[tuple[float, list[float], dict[str, float], float]] = []
    while len(kept) < windows and len(busy) < 3 * windows:
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        busy0 = busy_seconds()
        t0 = time.perf_counter()
        lat = await driver.run(count, inflight)
        elapsed = time.perf_counter() - t0
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        other = max(0.0, busy_seconds() - busy0 - sum(cpu.values())) / (elapsed * NCPU)
        if other > OTHER_CPU_LIMIT:
            busy.append((elapsed, lat, cpu, other))
            continue
        kept.append((elapsed, lat, cpu, other))
    rejected = len(busy)
    on_busy_machine = not kept
    if on_busy_machine:  # every window was disturbed: report the quietest one, marked as such
        kept = [min(busy, key=lambda w: w[3])]
    med = statistics.median
    rates = [count / e for e, _, _, _ in kept]
    all_lat = sorted(x for _, lat, _, _ in kept for x in lat)
    per_wf = {k: round(med(c[k] for _, _, c, _ in kept) / count * 1e6, 1) for k in pids}
    return Row(
        pipeline=name, sync=sync, inflight=inflight, steps=steps, payload_bytes=payload,
        workflows=count, workflows_per_s=round(med(rates), 1),
        p50_ms=round(_pct(all_lat, 0.50) * 1000, 3), p99_ms=round(_pct(all_lat, 0.99) * 1000, 3),
        cpu_us_per_workflow=per_wf, cpu_us_per_step=round(sum(per_wf.values()) / steps, 1),
        peak_rss_mb={k: round(rss_bytes(p) / 2**20, 1) for k, p in pids.items()},
        other_cpu_pct=round(med(o for *_, o in kept) * 100, 1), windows=len(kept),
        rejected_windows=rejected, busy_machine=on_busy_machine,
    )


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "switchyard.bench.workers", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)


BENCH_WORKFLOW = "name: {name}\nsteps:\n{steps}"
STEP = "  - {{name: s{i}, role: hop{role}, timeout_s: 60, input: {{payload: input.payload, n: input.n}}}}\n"


def _workflow(name: str, steps: int) -> str:
    return BENCH_WORKFLOW.format(
        name=name, steps="".join(STEP.format(i=i, role=(i % HOPS) + 1) for i in range(steps)))


@dataclass
class Plan:
    inflight: list[int]
    count: dict[int, int]
    windows: int
    syncs: list[str]
    growth_steps: int
    growth_payload: int
    growth_count: int
    parked: int
    telemetry: bool = False  # also what tracing costs (bench.telemetry)


FULL = Plan(inflight=[1, 64, 256], count={1: 200, 64: 2000, 256: 3000}, windows=3,
            syncs=["default", "always"], growth_steps=50, growth_payload=100_000, growth_count=400,
            parked=10_000, telemetry=True)
QUICK = Plan(inflight=[1, 64], count={1: 50, 64: 400}, windows=1, syncs=["default"],
             growth_steps=50, growth_payload=100_000, growth_count=200, parked=1_000,
             telemetry=True)


async def run_bench(plan: Plan, log: Callable[[str], None]) -> Report:
    report = Report(machine={"cpus": NCPU, "python": sys.version.split()[0],
                             "uvloop": loop_factory() is not None})
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp:
        for sync in plan.syncs:
            async with NatsServer(store_dir=Path(tmp) / f"nats-{sync}",
                                  sync_always=sync == "always") as server:
                pid = server.pid or 0
                log(f"[{sync}] raw core NATS")
                await _bench_raw(report, "raw-core", server.url, pid, sync, plan)
                log(f"[{sync}] raw JetStream")
                await _bench_raw(report, "raw-jetstream", server.url, pid, sync, plan)
                log(f"[{sync}] Switchyard")
                await _bench_switchyard(report, server.url, pid, sync, plan, Path(tmp), log)
                if plan.telemetry and sync == plan.syncs[0]:
                    from switchyard.bench.telemetry import bench_telemetry

                    await bench_telemetry(report, server.url, pid, sync, plan, Path(tmp), log)
    _ratios(report)
    await _bench_langgraph(report, plan, log)
    return report


async def _bench_raw(report: Report, name: str, url: str, nats_pid: int, sync: str,
                     plan: Plan) -> None:
    prefix = f"raw{uuid.uuid4().hex[:6]}"
    kind = "core" if name == "raw-core" else "js"
    procs = [await _spawn(kind, url, str(hop), prefix) for hop in range(1, HOPS + 1)]
    nc = await nats.connect(url)
    driver: RawCoreDriver | RawJetStreamDriver = (
        RawCoreDriver(nc, prefix, 1024) if kind == "core" else RawJetStreamDriver(nc, prefix, 1024))
    try:
        await driver.start()
        if kind == "core":  # the workers subscribe asynchronously: wait until each answers
            await _wait_for_core(nc, prefix)
        pids = {"nats-server": nats_pid, **{f"hop{i + 1}": p.pid for i, p in enumerate(procs)}}
        for inflight in plan.inflight:
            report.rows.append(await measure(name, sync, driver, pids, inflight=inflight,
                                             count=plan.count[inflight], windows=plan.windows))
    finally:
        await driver.stop()
        await nc.close()
        await stop_processes(procs, 10)


async def _wait_for_core(nc: Client, prefix: str) -> None:
    async with asyncio.timeout(30):
        for hop in range(1, HOPS + 1):
            while True:
                task = Task(id="w:1:1", workflow_id="w", workflow="raw", step="1", role="h",
                            attempt=1, input={})
                try:
                    await nc.request(raw_subject(prefix, "core", hop), codec.encode(task),
                                     timeout=0.5)
                    break
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    await asyncio.sleep(0.05)  # a worker still starting


async def _bench_switchyard(report: Report, url: str, nats_pid: int, sync: str, plan: Plan,
                            tmp: Path, log: Callable[[str], None]) -> None:
    prefix = f"sb{uuid.uuid4().hex[:6]}"
    data = tmp / prefix
    data.mkdir()
    files = []
    for name, steps in (("bench5", HOPS), (f"bench{plan.growth_steps}", plan.growth_steps)):
        path = data / f"{name}.yaml"
        path.write_text(_workflow(name, steps))
        files.append(str(path))
    park = data / "park.yaml"
    park.write_text("name: park\nsteps:\n  - {name: wait, role: hop1, routes: "
                    "[{when: '`true`', to: '@human', reason: parked}]}\n")
    files.append(str(park))
    settings = Settings(nats_url=url, prefix=prefix, data_dir=data, workflows=",".join(files),
                        concurrency=256)
    agents = {f"hop{i}": f"switchyard.bench.workers:hop{i}" for i in range(1, HOPS + 1)}
    async with LocalStack(settings, agents=agents) as stack:
        nc = await nats.connect(url)
        pids = {"nats-server": nats_pid, **{n: p.pid for n, p in stack.procs.items()}}
        try:
            driver = SwitchyardDriver(nc, settings.subjects, "bench5", 1024)
            await driver.start()
            if sync == plan.syncs[0]:  # counted, not assumed: every stream and bucket's appends
                before = await _stored(nc, settings.subjects)
                driver.finished.clear()
                await driver.run(50, 8)
                client = SwitchyardClient(nc, settings.subjects)
                for wid in driver.finished:  # until each one's outcome is stored
                    await client.wait(wid, timeout=30, stop_at_escalation=False)
                after = await _stored(nc, settings.subjects)
                report.stored_writes_per_step["switchyard"] = round(
                    (sum(after.values()) - sum(before.values())) / (50 * HOPS), 2)
                report.stored_writes_per_step["switchyard_by_stream"] = {
                    name: round((n - before.get(name, 0)) / (50 * HOPS), 2)
                    for name, n in sorted(after.items()) if n != before.get(name, 0)}
            for inflight in plan.inflight:
                report.rows.append(await measure("switchyard", sync, driver, pids,
                                                 inflight=inflight, count=plan.count[inflight],
                                                 windows=plan.windows))
            await driver.stop()
            if sync == plan.syncs[0]:
                log(f"[{sync}] growth: steps and payload")
                await _growth(report, nc, settings, pids, sync, plan)
                log(f"[{sync}] supervisor memory with {plan.parked} workflows waiting")
                report.growth["parked_workflows"] = plan.parked
                report.growth["supervisor_rss_mb_parked"] = await _parked(
                    nc, settings, stack.procs["supervisor"].pid, plan.parked)
        finally:
            await nc.close()
    if sync == plan.syncs[0]:
        log(f"[{sync}] Switchyard with two supervisor replicas")
        await _bench_replicas(report, url, nats_pid, sync, plan, settings, agents)


async def _bench_replicas(report: Report, url: str, nats_pid: int, sync: str, plan: Plan,
                          settings: Settings, agents: dict[str, str]) -> None:
    """The five-step pipeline at 64 in flight (or the plan's most) with two supervisors
    sharing the journal."""
    prefix = f"sr{uuid.uuid4().hex[:6]}"
    two = settings.model_copy(update={"prefix": prefix})
    async with LocalStack(two, agents=agents, replicas={"supervisor": 2}) as stack:
        nc = await nats.connect(url)
        pids = {"nats-server": nats_pid, **{n: p.pid for n, p in stack.procs.items()}}
        try:
            driver = SwitchyardDriver(nc, two.subjects, "bench5", 1024)
            await driver.start()
            inflight = 64 if 64 in plan.count else max(plan.inflight)
            report.rows.append(await measure("switchyard-2-supervisors", sync, driver, pids,
                                             inflight=inflight, count=plan.count[inflight],
                                             windows=plan.windows))
            await driver.stop()
        finally:
            await nc.close()


async def _stored(nc: Client, s: Subjects) -> dict[str, int]:
    """Messages ever appended to each of the deployment's streams and buckets."""
    names = (s.stream(""), f"KV_{s.bucket('')}")
    return {info.config.name: info.state.last_seq for info in await nc.jetstream().streams_info()
            if info.config.name and info.config.name.startswith(names)}


async def _growth(report: Report, nc: Client, settings: Settings, pids: dict[str, int],
                  sync: str, plan: Plan) -> None:
    rows = {}
    for label, workflow, steps, payload, count in (
        ("5 steps, 1 KB", "bench5", HOPS, 1024, plan.growth_count),
        (f"{plan.growth_steps} steps, 1 KB", f"bench{plan.growth_steps}", plan.growth_steps, 1024,
         max(4, plan.growth_count * HOPS // plan.growth_steps)),
        (f"5 steps, {plan.growth_payload // 1000} KB", "bench5", HOPS, plan.growth_payload,
         max(4, plan.growth_count // 2)),
    ):
        driver = SwitchyardDriver(nc, settings.subjects, workflow, payload)
        await driver.start()
        row = await measure("switchyard", sync, driver, pids, inflight=16, count=count, windows=1,
                            steps=steps, payload=payload)
        await driver.stop()
        rows[label] = row.cpu_us_per_step
        report.rows.append(row)
    base = rows["5 steps, 1 KB"]
    report.growth["cpu_us_per_step"] = rows
    report.growth["per_step_ratio_vs_5_steps_1kb"] = {k: round(v / base, 2) for k, v in rows.items()}


async def _parked(nc: Client, settings: Settings, supervisor_pid: int, count: int) -> float:
    s = settings.subjects
    seen = 0
    all_parked = asyncio.Event()

    async def on_escalation(msg: Msg) -> None:
        nonlocal seen
        seen += 1
        if seen >= count:
            all_parked.set()

    sub = await nc.subscribe(s.human_queue, cb=on_escalation)
    journal = Journal(nc.jetstream(), s)
    run = uuid.uuid4().hex[:6]
    for i in range(count):
        await journal.submit(WorkflowRequest(id=f"p{run}-{i}", workflow="park", input={"n": i},
                                             submitted_at=0))
    async with asyncio.timeout(600):
        await all_parked.wait()
    await sub.unsubscribe()
    return round(rss_bytes(supervisor_pid, "VmRSS") / 2**20, 1)


def _ratios(report: Report) -> None:
    def row(pipeline: str, sync: str, inflight: int) -> Row | None:
        for r in report.rows:
            if (r.pipeline, r.sync, r.inflight, r.steps, r.payload_bytes) == (
                    pipeline, sync, inflight, HOPS, 1024):
                return r
        return None

    for sync in ("default", "always"):
        sy, js = row("switchyard", sync, 64), row("raw-jetstream", sync, 64)
        if sy and js:
            report.ratios[f"throughput_vs_raw_jetstream_64_{sync}"] = round(
                sy.workflows_per_s / js.workflows_per_s, 3)
        sy1, js1 = row("switchyard", sync, 1), row("raw-jetstream", sync, 1)
        if sy1 and js1:
            report.ratios[f"p50_minus_raw_jetstream_p50_us_1_{sync}"] = round(
                (sy1.p50_ms - js1.p50_ms) * 1000, 1)
        if sy:
            report.ratios[f"p99_over_p50_64_{sync}"] = round(sy.p99_ms / sy.p50_ms, 2)
    report.stored_writes_per_step |= {
        "raw-jetstream": 2,
        "which": "per step: the task and the result (on the workflow's journal); per workflow "
                 "also the submission (the journal's first record) and the outcome; raw "
                 "JetStream stores the task and the result",
    }


async def _bench_langgraph(report: Report, plan: Plan, log: Callable[[str], None]) -> None:
    try:
        from switchyard.bench.langgraph import langgraph_rows
    except ImportError:
        report.growth["langgraph"] = "not installed: pip install -e .[bench]"
        return
    log("LangGraph peer rows")
    for row in await langgraph_rows(plan.count.get(64, max(plan.count.values())), plan.windows):
        report.rows.append(row)
    sy = [r for r in report.rows if (r.pipeline, r.inflight, r.steps, r.payload_bytes) ==
          ("switchyard", 64, HOPS, 1024)]
    for r in report.rows:
        if r.pipeline.startswith("langgraph") and sy:
            ref = sy[-1] if "sqlite" in r.pipeline else sy[0]
            report.ratios[f"switchyard_{ref.sync}_over_{r.pipeline}"] = round(
                ref.workflows_per_s / r.workflows_per_s, 2)


def report_json(report: Report) -> bytes:
    return msgspec.json.format(msgspec.json.encode(asdict(report)), indent=2)

