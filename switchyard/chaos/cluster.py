"""The ``cluster`` chaos scenario: a three-node JetStream cluster that loses a node mid-run.

Three local nats-servers from the configs ``switchyard nats-config --cluster 3`` writes (without
the authorization: the chaos stack runs on an open bus), every stream and bucket at R3
(``SWITCHYARD_REPLICAS=3``), ``NATS_URL`` naming all three nodes, and the usual chaos stack as
processes (supervisor, tool host with ``record_effect``, two worker replicas). Midway through the
submissions the journal stream's leader is SIGKILLed: the node every journal append and every
leader read of a fold's catch-up goes to, so its loss costs an election on the hottest stream.
The books are the suite's: every acknowledged workflow must complete, none lost, no side effect
twice. Then the node is started again on its store, and the scenario waits (bounded) until every
replica of every stream and bucket reports itself current with no lag.

Timed: ``recovered_s`` from the kill to the first outcome after it, ``caught_up_s`` from the
restart to every replica current.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from switchyard.chaos.suite import SIZES, TIME_BOUND_S, ChaosReport, _ids, _Run
from switchyard.natsd import NatsCluster, free_ports
from switchyard.protocol.bus.provision import layout_names
from switchyard.protocol.subjects import Stream
from switchyard.supervisor import authz

NODES = 3
REPLICAS = 3
# three servers fsyncing every write share the machine with the stack: a longer bound than the
# single-server scenarios'
CLUSTER_TIME_BOUND_S = {"ci": 300.0, "full": 1200.0}
CATCH_UP_BOUND_S = 120.0


class _ClusterRun(_Run):
    """A chaos run whose bus is a local three-node cluster."""

    cluster: NatsCluster | None = None

    async def _start_bus(self) -> None:
        base = free_ports(2 * NODES)  # one range for both, so client and route ports cannot meet
        configs = authz.cluster_configs(
            "", nodes=NODES, store_dir=self.tmp / "nats", port=base, cluster_port=base + NODES,
            sync_always=True)
        paths = []
        for name, text in configs.items():
            (self.tmp / name).write_text(text)
            paths.append(self.tmp / name)
        self.cluster = await NatsCluster(paths).start()
        self.settings.nats_url = self.cluster.urls  # all three: clients fail over between them
        self.settings.replicas = REPLICAS

    async def _stop_bus(self) -> None:
        if self.cluster is not None:
            await self.cluster.stop()

    def node_index(self, server_name: str) -> int:
        return int(server_name.rsplit("-", 1)[1]) - 1  # node-2 is the second


async def _lagging(js: JetStreamContext, names: list[str]) -> list[str]:
    """The streams some replica of which is not current, is offline, or lags (or whose leader
    cannot say, being elected)."""
    behind = []
    for name in names:
        try:
            cluster = (await js.stream_info(name)).cluster
        except Exception:  # no leader at the moment: not caught up either
            behind.append(name)
            continue
        peers = cluster.replicas or [] if cluster else []
        if (cluster is None or not cluster.leader or len(peers) != REPLICAS - 1
                or any(not p.current or p.offline or p.lag for p in peers)):
            behind.append(name)
    return behind


async def _wait_caught_up(js: JetStreamContext, names: list[str], bound: float) -> list[str]:
    """Poll, bounded, until every replica of every stream is current with lag 0 (the server has
    no event for it); returns the streams still behind when the bound passed, [] if none."""
    behind = names
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(bound):
            while behind := await _lagging(js, names):  # noqa: ASYNC110 - no "caught up" event
                await asyncio.sleep(0.25)
    return behind


async def _cluster(run: _ClusterRun, count: int, deadline: float) -> None:
    assert run.cluster is not None
    r = run.report
    nc: Client = await run.connect()
    js = nc.jetstream(timeout=5.0)
    patient = nc.jetstream(timeout=15.0)
    journal = run.settings.subjects.stream(Stream.JOURNAL)
    arrivals: list[float] = []  # when each outcome was seen (live, on the core subject)

    async def seen(msg: Msg) -> None:
        arrivals.append(time.monotonic())

    live = await nc.subscribe(run.settings.subjects.all("workflow.outcome"), cb=seen)
    killed_at = 0.0
    victim = -1

    async def kill_journal_leader() -> None:
        nonlocal killed_at, victim
        for attempt in range(3):  # a cluster fsyncing under full load can be slow to answer
            try:
                info = await patient.stream_info(journal)
                break
            except TimeoutError:
                if attempt == 2:
                    raise
        leader = info.cluster.leader if info.cluster else None
        assert leader, f"{journal} has no leader to kill"
        victim = run.node_index(leader)
        killed_at = time.monotonic()
        await run.cluster.kill(victim)  # type: ignore[union-attr]
        r.kills += 1
        r.killed = f"{leader} ({journal} leader)"

    try:
        ids = await run.submit_all(nc, _ids("cl", count), midway=kill_journal_leader)
        run.tally(ids, await run.outcomes(nc, ids, deadline))
        after = [t for t in arrivals if t > killed_at]
        r.recovered_s = round(after[0] - killed_at, 2) if after else -1.0
        if not after:
            r.problems.append("no workflow finished after the node was killed")
        with contextlib.suppress(Exception):
            info = await js.stream_info(journal)
            r.killed += f"; new leader {info.cluster.leader if info.cluster else '?'}"
        restarted_at = time.monotonic()
        await run.cluster.restart(victim)
        r.restarts += 1
        names = layout_names(run.settings.subjects)
        behind = await _wait_caught_up(js, names, CATCH_UP_BOUND_S)
        r.caught_up_s = round(time.monotonic() - restarted_at, 2)
        if behind:
            r.problems.append(f"replicas of {behind} not current {CATCH_UP_BOUND_S:.0f} s after "
                              "the node restarted")
        if r.escalated:  # a node's loss is no reason to ask a person (the toolhost's INTERNAL)
            r.problems.append(f"{r.escalated} workflows escalated to a person")
        if r.processes_restarted:  # clients fail over to the other nodes: none should die
            r.problems.append(f"processes died and were restarted: {r.exits}")
    finally:
        with contextlib.suppress(Exception):
            await live.unsubscribe()
        await nc.close()


async def run_cluster(*, scale: str = "ci", seed: int = 1) -> ChaosReport:
    report = ChaosReport(scenario="cluster", seed=seed, scale=scale,
                         time_bound_s=CLUSTER_TIME_BOUND_S.get(scale, TIME_BOUND_S[scale]))
    started = time.monotonic()
    deadline = started + report.time_bound_s
    with tempfile.TemporaryDirectory(prefix="switchyard-chaos-cluster-") as tmp:
        run = _ClusterRun(report, Path(tmp), {}, workflow_steps=1,
                          replicas={"agent-worker": 2})
        try:
            await run.start()
            await _cluster(run, SIZES[scale]["cluster"], deadline)
        finally:
            await run.stop()
    report.elapsed_s = round(time.monotonic() - started, 1)
    report.check()
    return report
