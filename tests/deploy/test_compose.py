"""``compose.yaml`` run for real under podman-compose: the whole stack up, the demo's 30 tickets
ending as labelled, an agent container killed while it holds tasks and nothing lost, three
replicas of the action agent sharing its work, the observability profile's Prometheus scraping
every container and counting the demo's runs, and everything torn down."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.js.client import JetStreamContext

from switchyard.natsd import free_ports

from .conftest import CLI, Compose, run

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

ROLES = ("triage", "retrieval", "action", "compliance", "reviewer")


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 120) -> None:
    """Poll ``check`` until it holds: container and consumer state have no event to wait on."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 - podman and $JS.API push no such event
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:.0f} s: {what}") from None


async def consumer(js: JetStreamContext, role: str) -> Any:
    try:
        return await js.consumer_info("SY_TASKS", role)
    except Exception:  # not yet created, or the server is still starting
        return None


async def test_compose_stack_works_loses_nothing_and_scales(
    compose: Compose, record_property: Callable[[str, object], None],
) -> None:
    prometheus_port = free_ports(1)
    compose.settings = {"SWITCHYARD_ACK_WAIT": "5", "SWITCHYARD_LOG_LEVEL": "warning",
                        "SWITCHYARD_PROMETHEUS_PORT": str(prometheus_port)}
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    (await compose.compose("up", "-d", "--build", "--scale", "action=3")).check()
    timings["build and up"] = time.monotonic() - t0
    services = {str(c["Labels"]["io.podman.compose.service"])  # type: ignore[index]
                for c in await compose.containers()}
    assert services == {"nats", "supervisor", "toolhost", "console", "a2a", *ROLES}, services
    # the observability profile's Prometheus (the collector's and Grafana's images are not
    # here: see the README's Telemetry section)
    (await compose.compose("--profile", "observability", "up", "-d", "--no-deps",
                           "prometheus")).check()
    assert len(await compose.containers("action")) == 3

    async def error_cb(exc: Exception) -> None:  # the server starts after us: retried
        pass

    nc = await nats.connect(compose.url, connect_timeout=2, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.5, allow_reconnect=True, error_cb=error_cb)
    try:
        js = nc.jetstream(timeout=5)

        async def all_pulling() -> bool:  # every replica of every role waits for tasks
            infos = [await consumer(js, role) for role in ROLES]
            want = {"action": 3}
            return all(i is not None and i.num_waiting >= want.get(r, 1)
                       for r, i in zip(ROLES, infos, strict=True))

        await until(all_pulling, "every agent replica pulling its role's tasks")
        restarts = {str(c["Names"][0]): int((await compose.inspect(str(c["Names"][0])))["RestartCount"])  # type: ignore[index]
                    for c in await compose.containers() if "prometheus" not in str(c["Names"])}
        assert not any(restarts.values()), f"containers restarted at start: {restarts}"
        timings["up to ready"] = time.monotonic() - t0

        # the triage agent is frozen while it still holds a pull request, so the tasks the server
        # hands it stay in its hands: then it is SIGKILLed, as the OOM killer would
        [triage] = await compose.containers("triage")
        name = str(triage["Names"][0])  # type: ignore[index]
        (await run(compose.podman, "pause", name)).check()
        assert (await consumer(js, "triage")).num_waiting >= 1
        demo = asyncio.create_task(compose.compose(
            "--profile", "demo", "run", "--rm", "demo", "demo", "--connect", "--json",
            "--timeout", "240"))

        async def held() -> bool:
            info = await consumer(js, "triage")
            return info is not None and info.num_ack_pending >= 1

        await until(held, "the frozen triage agent holding tasks")
        holding = (await consumer(js, "triage")).num_ack_pending
        pid = int((await compose.inspect(name))["State"]["Pid"])  # type: ignore[index]
        os.kill(pid, signal.SIGKILL)
        (await run(compose.podman, "unpause", name)).check()

        async def restarted() -> bool:
            state = await compose.inspect(name)
            return int(state["RestartCount"]) >= 1 and state["State"]["Running"]  # type: ignore[index]

        await until(restarted, "compose's restart policy bringing the killed triage agent back")
        ran = (await demo).check()
        timings["demo"] = time.monotonic() - t0 - timings["up to ready"]
        report = json.loads(ran.stdout[ran.stdout.index("{"):])
        after = await consumer(js, "triage")
    finally:
        await nc.close()

    assert report["tickets"] == 30 and report["ok"], report["counts"]
    assert report["matched"] == 30, [r for r in report["runs"] if r["status"] != r["expect"]]
    # one triage task per ticket, and what the killed container held delivered once more
    redelivered = after.delivered.consumer_seq - 30
    assert redelivered >= holding, (after.delivered, holding)

    status = await run(CLI, "status", "--json",
                       env={**os.environ, "NATS_URL": compose.url}, timeout=60)
    found = json.loads(status.check().stdout)["services"]
    served = {str(s["metadata"]["instance"]): s["stats"]["endpoints"][0]["data"]["received"]
              for s in found if s["name"] == "sy-agent-action"}
    assert len(served) == 3, served
    assert sum(served.values()) >= 22 and all(n >= 1 for n in served.values()), served

    scraped = await prometheus_saw_the_demo(f"http://127.0.0.1:{prometheus_port}",
                                            report["counts"])
    async with httpx.AsyncClient() as http:  # the console's container, on the host's loopback
        health = await http.get(f"http://127.0.0.1:{compose.console_port}/healthz")
        assert health.json() == {"nats": "connected"}, health.text
        assert (await http.get(f"http://127.0.0.1:{compose.console_port}/")).status_code == 303
        card = await http.get(f"http://127.0.0.1:{compose.a2a_port}/.well-known/agent-card.json")
        assert card.json()["name"] == "Switchyard", card.text  # the gateway's container

    t1 = time.monotonic()
    await compose.down()
    timings["down"] = time.monotonic() - t1
    assert await compose.leftovers() == []
    record_property("report", f"30 tickets, {report['matched']}/30 as labelled "
          f"({report['counts']}); triage killed holding {holding} tasks, "
          f"{redelivered} redelivered; action replicas served {sorted(served.values())}; "
          f"Prometheus: {scraped}; "
          + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


async def prometheus_saw_the_demo(url: str, counts: dict[str, int]) -> str:
    """Every container a target that is up (the three action replicas each their own), and the
    supervisor's counters, scraped, counting the demo's 30 submissions and the runs that ended
    as the demo saw them end."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        async def query(expr: str) -> float:
            found = (await http.get("/api/v1/query", params={"query": expr})).json()
            return sum(float(r["value"][1]) for r in found["data"]["result"])

        async def all_up() -> bool:
            try:
                targets = (await http.get("/api/v1/targets")).json()["data"]["activeTargets"]
            except httpx.TransportError:  # still starting
                return False
            up = [t["labels"]["process"] for t in targets if t["health"] == "up"]
            return len(up) == len(targets) == 11 and set(up) == {
                "supervisor", "toolhost", "console", "a2a", *ROLES}

        await until(all_up, "Prometheus scraping all 11 containers (3 action replicas)")

        want = {s: float(counts.get(s, 0)) for s in ("completed", "rejected", "failed")}
        ended: dict[str, float] = {}

        async def counted() -> bool:  # a scrape from before the demo's end is up to 5 s old
            ended.update({s: await query(
                f'sum(switchyard_supervisor_workflows_total{{status="{s}"}})') for s in want})
            return ended == want and await query(
                'sum(switchyard_supervisor_inputs_total{kind="submit"})') >= 30

        await until(counted, f"the scraped supervisor counting the demo's 30 submissions and "
                             f"its ended runs {want}", timeout=60)
        per_replica: list[float] = []

        async def every_replica() -> bool:  # each replica's last tasks may be a scrape behind
            found = (await http.get("/api/v1/query", params={
                "query": 'sum by (instance) (switchyard_agent_tasks_total{role="action"})'})).json()
            per_replica[:] = sorted(float(r["value"][1]) for r in found["data"]["result"])
            return len(per_replica) == 3 and all(n >= 1 for n in per_replica)

        await until(every_replica, "the scraped tasks of each of the three action replicas",
                    timeout=30)
    return f"11 targets up, {ended} runs ended, action tasks per replica {per_replica}"


async def test_compose_secure_bus(
    compose: Compose, tmp_path: Path, record_property: Callable[[str, object], None],
) -> None:
    """compose.secure.yaml over compose.yaml: the generated authorization, one key per service
    mounted as a secret, the admin provisioning; the demo as the console identity; the server
    logs no permission violation."""
    secure = tmp_path / "nats-secure"
    made = await run(CLI, "nats-config", "--policy", "support", "--out", str(secure),
                     env={**os.environ}, timeout=60)
    made.check()
    # as docs/deploy.md says: the image's user (10001) reads the keys as their group
    creds = secure / "creds"
    chgrp = ["chgrp", "-R", "10001", str(creds)]
    (await run(*(chgrp if os.geteuid() == 0 else [compose.podman, "unshare", *chgrp]))).check()
    creds.chmod(0o750)
    for key in creds.glob("*.nk"):
        key.chmod(0o640)
    compose.files = ["compose.yaml", "compose.secure.yaml"]
    compose.settings = {"SWITCHYARD_SECURE_DIR": str(secure), "SWITCHYARD_LOG_LEVEL": "warning"}
    (await compose.compose("up", "-d", "--build")).check()
    ran = await compose.compose("--profile", "demo", "run", "--rm", "demo", "demo", "--connect",
                                "--json", "--timeout", "240")
    ran.check()
    report = json.loads(ran.stdout[ran.stdout.index("{"):])
    assert report["matched"] == 30 and report["ok"], report["counts"]
    [nats_box] = await compose.containers("nats")
    logs = await run(compose.podman, "logs", str(nats_box["Names"][0]), timeout=60)  # type: ignore[index]
    server_log = (logs.stdout + logs.stderr).splitlines()
    assert any("Server is ready" in line for line in server_log)  # the log is really there
    # what the server logs of a refused publish or subscribe ("Publish Violation", ...)
    violations = [line for line in server_log if "Violation" in line]
    assert violations == [], violations[:10]
    # an unknown key is refused by the server itself
    denied = await run(CLI, "status", env={**os.environ, "NATS_URL": compose.url}, timeout=60)
    assert denied.code != 0 and "uthorization" in denied.stdout + denied.stderr, denied
    await compose.down()
    assert await compose.leftovers() == []
    record_property("report", f"{report['matched']}/30 as labelled, 0 permission violations, "
                              "the CLI without a key refused")
