"""What tracing costs: the five-hop pipeline at 64 in flight three times on one nats-server,
with no spans at all (``SWITCHYARD_TRACE=0``, the baseline), with the OpenTelemetry API and no
exporter (every user's default), and with the SDK exporting every span (sampling 1.0) over
OTLP/HTTP to a receiver this process runs on 127.0.0.1."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from switchyard.bench.drivers import SwitchyardDriver
from switchyard.bench.run import Plan, Report, _workflow, measure
from switchyard.bench.workers import HOPS
from switchyard.settings import Settings
from switchyard.stack import LocalStack

VARIANTS = (("switchyard-trace-off", "no spans"), ("switchyard-trace-api", "API, no exporter"),
            ("switchyard-trace-otlp", "OTLP exporter, sampling 1.0"))


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
    sink = _Sink()
    endpoint = sink.start()
    try:
        envs: dict[str, dict[str, str]] = {
            "switchyard-trace-off": {"SWITCHYARD_TRACE": "0"},
            "switchyard-trace-api": {},
            "switchyard-trace-otlp": {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}}
        for name, what in VARIANTS:
            log(f"[{sync}] tracing: {what}")
            report.rows.append(await _row(name, envs[name], url, nats_pid, sync, plan,
                                          inflight, tmp))
    finally:
        sink.stop()
    rates = {r.pipeline: r.workflows_per_s for r in report.rows if r.pipeline in envs}
    off = rates.get("switchyard-trace-off") or 0.0
    if off:
        report.ratios[f"tracing_api_cost_pct_{inflight}_{sync}"] = round(
            (1 - rates["switchyard-trace-api"] / off) * 100, 1)
        report.ratios[f"tracing_otlp_cost_pct_{inflight}_{sync}"] = round(
            (1 - rates["switchyard-trace-otlp"] / off) * 100, 1)
    report.growth["otlp_exports"] = {"requests": sink.requests, "bytes": sink.bytes}


async def _row(name: str, env: dict[str, str], url: str, nats_pid: int, sync: str, plan: Plan,
               inflight: int, tmp: Path) -> Any:
    prefix = f"st{uuid.uuid4().hex[:6]}"
    data = tmp / prefix
    data.mkdir()
    path = data / "bench5.yaml"
    path.write_text(_workflow("bench5", HOPS))
    settings = Settings(nats_url=url, prefix=prefix, data_dir=data, workflows=str(path),
                        concurrency=256)
    agents = {f"hop{i}": f"switchyard.bench.workers:hop{i}" for i in range(1, HOPS + 1)}
    async with LocalStack(settings, agents=agents, env=env) as stack:
        nc = await nats.connect(url)
        pids = {"nats-server": nats_pid, **{n: p.pid for n, p in stack.procs.items()}}
        try:
            driver = SwitchyardDriver(nc, settings.subjects, "bench5", 1024)
            await driver.start()
            row = await measure(name, sync, driver, pids, inflight=inflight,
                                count=plan.count[inflight], windows=plan.windows)
            await driver.stop()
            return row
        finally:
            await nc.close()
