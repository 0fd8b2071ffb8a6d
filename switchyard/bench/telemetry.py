"""What tracing costs: the five-hop pipeline at 64 in flight on one nats-server, with no spans
at all (``SWITCHYARD_TRACE=0``, the baseline), with the OpenTelemetry API and no exporter (every
user's default), and with the SDK exporting every span (sampling 1.0) over OTLP/HTTP to a
receiver this process runs on 127.0.0.1.

The stacks run side by side and their windows are interleaved (off, API, OTLP, then the other
way round, round after round), so a drift in what the machine gives us falls on all alike; a cost
is the median of the rounds' own ratios, not a ratio of two runs minutes apart. A fourth stack,
with no spans like the first, says what two like stacks differ by on this machine
(``tracing_noise_pct``): a cost inside it is no cost measurable here."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import nats
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from switchyard.bench.drivers import SwitchyardDriver
from switchyard.bench.run import NCPU, Plan, Report, Row, _workflow, measure
from switchyard.bench.workers import HOPS
from switchyard.loop import loop_factory
from switchyard.natsd import NatsServer
from switchyard.settings import Settings
from switchyard.stack import LocalStack

VARIANTS = (("switchyard-trace-off", "no spans"), ("switchyard-trace-api", "API, no exporter"),
            ("switchyard-trace-otlp", "OTLP exporter, sampling 1.0"),
            # a second stack with no spans: what two like stacks differ by here (the noise)
            ("switchyard-trace-off-b", "no spans, a second stack"))


class _Sink:
    """An OTLP/HTTP endpoint that takes every export and counts its bytes."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        app = Starlette(routes=[Route("/v1/traces", self._take, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                     log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    async def _take(self, request: Request) -> Response:
        self.requests += 1
        self.bytes += len(await request.body())
        return Response(b"", media_type="application/x-protobuf")

    def start(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:  # uvicorn sets it; there is no event to wait on
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the OTLP sink did not start")
            time.sleep(0.01)
        return f"http://127.0.0.1:{self._server.servers[0].sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


async def bench_telemetry(report: Report, url: str, nats_pid: int, sync: str, plan: Plan,
                          tmp: Path, log: Callable[[str], None]) -> None:
    inflight = 64 if 64 in plan.count else max(plan.inflight)
    rounds = max(3, plan.windows * 4)
    sink = _Sink()
    endpoint = sink.start()
    envs: dict[str, dict[str, str]] = {
        "switchyard-trace-off": {"SWITCHYARD_TRACE": "0"},
        "switchyard-trace-api": {},
        "switchyard-trace-otlp": {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
        "switchyard-trace-off-b": {"SWITCHYARD_TRACE": "0"}}
    windows: dict[str, list[Row]] = {name: [] for name, _ in VARIANTS}
    try:
        async with contextlib.AsyncExitStack() as stacks:
            benches = {name: await stacks.enter_async_context(_Bench(url, nats_pid, envs[name], tmp))
                       for name, _ in VARIANTS}
            for n in range(rounds):
                order = VARIANTS if n % 2 == 0 else VARIANTS[::-1]
                log(f"[{sync}] tracing, round {n + 1}/{rounds}: "
                    + ", ".join(what for _, what in order))
                for name, _ in order:
                    windows[name].append(await benches[name].window(name, sync, inflight,
                                                                    plan.count[inflight]))
    finally:
        sink.stop()
    for name, _ in VARIANTS:
        report.rows.append(_summary(windows[name]))
    off = windows["switchyard-trace-off"]
    for key, name in (("api", "switchyard-trace-api"), ("otlp", "switchyard-trace-otlp"),
                      ("noise", "switchyard-trace-off-b")):
        costs = [(1 - w.workflows_per_s / o.workflows_per_s) * 100
                 for w, o in zip(windows[name], off, strict=True) if o.workflows_per_s]
        if costs:
            report.ratios[f"tracing_{key}_cost_pct_{inflight}_{sync}"] = round(
                statistics.median(costs), 1)
            report.ratios[f"tracing_{key}_cost_pct_rounds_{inflight}_{sync}"] = [
                round(c, 1) for c in costs]
    report.growth["otlp_exports"] = {"requests": sink.requests, "bytes": sink.bytes}


def _summary(windows: list[Row]) -> Row:
    """One row for a variant's windows: the median window, with the median throughput."""
    middle = sorted(windows, key=lambda w: w.workflows_per_s)[len(windows) // 2]
    return dataclasses.replace(
        middle, workflows_per_s=round(statistics.median(w.workflows_per_s for w in windows), 1),
        windows=sum(w.windows for w in windows),
        rejected_windows=sum(w.rejected_windows for w in windows),
        busy_machine=all(w.busy_machine for w in windows))


class _Bench:
    """One variant's stack, up for the whole measurement."""

    def __init__(self, url: str, nats_pid: int, env: dict[str, str], tmp: Path) -> None:
        self.url, self.nats_pid, self.env = url, nats_pid, env
        prefix = f"st{uuid.uuid4().hex[:6]}"
        self.data = tmp / prefix
        self.data.mkdir()
        path = self.data / "bench5.yaml"
        path.write_text(_workflow("bench5", HOPS))
        self.settings = Settings(nats_url=url, prefix=prefix, data_dir=self.data,
                                 workflows=str(path), concurrency=256)
        self._exit = contextlib.AsyncExitStack()

    async def __aenter__(self) -> _Bench:
        agents = {f"hop{i}": f"switchyard.bench.workers:hop{i}" for i in range(1, HOPS + 1)}
        self.stack = await self._exit.enter_async_context(
            LocalStack(self.settings, agents=agents, env=self.env))
        nc = await nats.connect(self.url)
        self._exit.push_async_callback(nc.close)
        self.driver = SwitchyardDriver(nc, self.settings.subjects, "bench5", 1024)
        await self.driver.start()
        self._exit.push_async_callback(self.driver.stop)
        self.pids = {"nats-server": self.nats_pid,
                     **{n: p.pid for n, p in self.stack.procs.items()}}
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._exit.aclose()

    async def window(self, name: str, sync: str, inflight: int, count: int) -> Row:
        return await measure(name, sync, self.driver, self.pids, inflight=inflight, count=count,
                             windows=1)


async def run_telemetry(plan: Plan, log: Callable[[str], None]) -> Report:
    """``switchyard bench --only telemetry``: the tracing rows alone, on a nats-server of their
    own (fsync by the default interval, as the full benchmark's first pass)."""
    report = Report(machine={"cpus": NCPU, "python": sys.version.split()[0],
                             "uvloop": loop_factory() is not None})
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp:
        async with NatsServer(store_dir=Path(tmp) / "nats", sync_always=False) as server:
            await bench_telemetry(report, server.url, server.pid or 0, "default", plan, Path(tmp),
                                  log)
    return report
