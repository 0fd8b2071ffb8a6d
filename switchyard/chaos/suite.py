"""``switchyard chaos``: the real stack as processes, named seeded faults, Jepsen-style accounting.

Every scenario runs its own nats-server (file storage, ``sync_interval: always``), a tool host
serving ``record_effect`` (a side effect that is *not* idempotent by itself: it appends its
idempotency key to a file each time it runs) and worker agents whose every step makes one such
call. Then it breaks things and counts: submitted, acknowledged, completed, escalated, failed,
lost (acknowledged but no outcome by the time bound), duplicated side effects (a key written more
than once), and how many faults fired, by point. A fault that was asked for and never fired fails
the scenario: a chaos run that broke nothing proves nothing.

- ``agents``: one-step workflows while worker replicas die at chosen points (before the tool call,
  after it but before the reply is used, before the ack) and are also SIGKILLed every few seconds;
  each is restarted.
- ``supervisor``: five-step workflows with two supervisor replicas, killed (SIGKILL) several times,
  also right after storing a transition and before publishing what it implies; every step must be
  accepted once (one ``step.ok`` per step in the audit trail).
- ``nats``: one-step workflows with the nats-server SIGKILLed midway and restarted on the same
  storage; clients reconnect; every acknowledged submission must complete.
- ``poison``: malformed, oversized, wrong-version, wrong-schema and forged inputs on every subject
  family, then good workflows: all bad ones dead-lettered with a reason, no process restarted,
  all good ones completed.
- ``cluster`` (``chaos/cluster.py``): one-step workflows on a three-node cluster at R3, the journal
  stream's leader SIGKILLed midway, then restarted on its store until every replica is current.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client

from switchyard.client import SwitchyardClient
from switchyard.natsd import NatsServer
from switchyard.protocol import Subjects, Task, WorkflowRequest, codec, grants
from switchyard.protocol.bus.component import servers
from switchyard.protocol.bus.journal import Journal
from switchyard.protocol.bus.provision import open_bucket
from switchyard.protocol.headers import MSG_ID, PROTOCOL
from switchyard.protocol.subjects import Bucket
from switchyard.settings import Settings
from switchyard.stack import LocalStack
from switchyard.supervisor.catalog import WorkflowCatalog, definitions_of
from switchyard.supervisor.store import Snapshots

SCENARIOS = ("agents", "supervisor", "nats", "poison", "cluster")
SIZES: dict[str, dict[str, int]] = {
    "ci": {"agents": 150, "supervisor": 40, "supervisor_kills": 3, "nats": 300, "poison": 50,
           "good": 100, "cluster": 2000},
    "full": {"agents": 1000, "supervisor": 200, "supervisor_kills": 5, "nats": 5000,
             "poison": 50, "good": 100, "cluster": 5000},
}
TIME_BOUND_S = {"ci": 120.0, "full": 900.0}
POLICY = """
tools:
  record_effect: {risk: write}
roles:
  worker: {tools: [record_effect], calls_per_task: 4}
"""
STEP = "  - {{name: s{i}, role: worker, tools: [record_effect], timeout_s: 20, retries: 5, " \
       "backoff_s: 0.2, input: {{n: input.n}}}}\n"


@dataclass
class ChaosReport:
    scenario: str
    seed: int
    scale: str
    submitted: int = 0
    acknowledged: int = 0
    completed: int = 0
    escalated: int = 0
    failed: int = 0
    lost: int = 0
    effects: int = 0
    duplicated_effects: int = 0
    faults_asked: list[str] = field(default_factory=list)
    faults_fired: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    restarts: int = 0
    steps_accepted_twice: int = 0
    dead_lettered: int = 0
    bad_inputs: int = 0
    processes_restarted: list[str] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)  # how each of those ended: code, last log line
    elapsed_s: float = 0.0
    time_bound_s: float = 0.0
    killed: str = ""  # which server was killed, and what it led (cluster)
    recovered_s: float = 0.0  # from the kill to the first outcome after it (cluster)
    caught_up_s: float = 0.0  # from the restart to every replica current (cluster)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def check(self) -> None:
        """What must hold whatever the scenario."""
        if self.lost:
            self.problems.append(f"{self.lost} acknowledged workflows never finished")
        if self.duplicated_effects:
            self.problems.append(f"{self.duplicated_effects} side effects ran twice")
        for point in self.faults_asked:
            if not self.faults_fired.get(point):
                self.problems.append(f"fault {point} was asked for and never fired")
        if self.elapsed_s > self.time_bound_s:
            self.problems.append(f"took {self.elapsed_s:.0f} s, over the {self.time_bound_s:.0f} s bound")


class _Run:
    """One scenario's stack, its process keeper, and its books."""

    def __init__(self, report: ChaosReport, tmp: Path, faults: dict[str, float], *,
                 workflow_steps: int, replicas: dict[str, int]) -> None:
        self.report = report
        self.tmp = tmp
        self.rng = random.Random(report.seed)
        self.effects_file = tmp / "effects.log"
        self.faults_log = tmp / "faults.log"
        self.steps = workflow_steps
        report.faults_asked = sorted(faults)
        (tmp / "policy.yaml").write_text(POLICY)
        (tmp / "chaos.yaml").write_text(
            "name: chaos\nsteps:\n" + "".join(STEP.format(i=i) for i in range(workflow_steps)))
        fault_spec = ",".join(f"{k}={v:g}" for k, v in faults.items())
        env = {"SWITCHYARD_CHAOS_EFFECTS": str(self.effects_file), "SWITCHYARD_ACK_WAIT": "2",
               "SWITCHYARD_MAX_DELIVER": "20", "SWITCHYARD_POLICY": str(tmp / "policy.yaml"),
               "SWITCHYARD_LOG_LEVEL": "warning"}
        if fault_spec:
            env["SWITCHYARD_FAULTS"] = f"{fault_spec};seed={report.seed};log={self.faults_log}"
        self.settings = Settings(nats_url="nats://127.0.0.1:0", prefix="sy", data_dir=tmp / "data",
                                 workflows=str(tmp / "chaos.yaml"), concurrency=16)
        self.nats: NatsServer | None = None
        self.stack: LocalStack | None = None
        self._keepers: list[asyncio.Task[None]] = []
        self._env = env
        self._replicas = replicas
        self.keep_alive = True

    async def _start_bus(self) -> None:
        self.nats = await NatsServer(store_dir=self.tmp / "nats", sync_always=True).start()
        self.settings.nats_url = self.nats.url

    async def _stop_bus(self) -> None:
        if self.nats is not None:
            await self.nats.stop()

    async def start(self) -> None:
        await self._start_bus()
        self.stack = LocalStack(
            self.settings, agents={"worker": "switchyard.chaos.workers:worker"},
            env=self._env, replicas=self._replicas,
            toolhost_args=("--tools", "switchyard.chaos.workers:tools"))
        await self.stack.start()
        for name in list(self.stack.procs):
            self._keepers.append(asyncio.create_task(self._keep(name)))

    async def _keep(self, name: str) -> None:
        """Restart ``name`` whenever it dies (a fault point or a kill), while the run lasts."""
        assert self.stack is not None
        proc = self.stack.procs[name]
        while True:
            code = await proc.wait()
            if not self.keep_alive:
                return
            self.report.restarts += 1
            self.report.processes_restarted.append(name)
            last = self.stack.tail(name, 1)[-300:]
            self.report.exits.append(f"{name} exited {code}: {last}")
            proc = await self.stack.respawn(name)

    async def kill(self, name: str) -> None:
        assert self.stack is not None
        proc = self.stack.procs[name]
        if proc.returncode is None:
            proc.kill()
            self.report.kills += 1

    async def stop(self) -> None:
        self.keep_alive = False
        for keeper in self._keepers:
            keeper.cancel()
        for keeper in self._keepers:
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if self.stack is not None:
            await self.stack.stop()
        await self._stop_bus()

    # the books ---------------------------------------------------------------------------------

    async def connect(self) -> Client:
        async def quiet(exc: Exception) -> None:  # outages are the point here, not news
            pass

        return await nats.connect(servers(self.settings.nats_url), max_reconnect_attempts=-1,
                                  reconnect_time_wait=0.2, error_cb=quiet)

    async def submit_all(self, nc: Client, ids: list[str], inflight: int = 64,
                         midway: Any = None) -> list[str]:
        """Submit each id until the stream acknowledges it (through outages); returns the acked."""
        journal = Journal(nc.jetstream(timeout=2.0), self.settings.subjects)
        acked: list[str] = []
        slots = asyncio.Semaphore(inflight)

        async def one(wid: str) -> None:
            async with slots:
                req = WorkflowRequest(id=wid, workflow="chaos", input={"n": 0},
                                      submitted_at=time.time())
                for _ in range(300):  # bounded: about a minute of outage at most
                    try:
                        await journal.submit(req)  # a re-sent request is accepted once
                        acked.append(wid)
                        return
                    except Exception:
                        await asyncio.sleep(0.2)  # the bus is down: try again

        self.report.submitted += len(ids)
        half = len(ids) // 2
        async with asyncio.TaskGroup() as tg:
            for i, wid in enumerate(ids):
                if i == half and midway is not None:
                    tg.create_task(midway())
                tg.create_task(one(wid))
        self.report.acknowledged += len(acked)
        return acked

    async def outcomes(self, nc: Client, ids: list[str], deadline: float) -> dict[str, str]:
        """Follow the outcomes stream until every id has one, or the deadline passes."""
        s = self.settings.subjects
        want, seen = set(ids), dict[str, str]()
        sub = await nc.jetstream().subscribe(s.all("workflow.outcome"), ordered_consumer=True)
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                while want - set(seen):
                    msg = await sub.next_msg(timeout=None)
                    wid = msg.subject.rsplit(".", 1)[1]
                    if wid in want:
                        seen[wid] = msgspec.json.decode(msg.data)["status"]
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        client = SwitchyardClient(nc, s)
        for wid in want - set(seen):  # a last look at each one not seen, waiting for a person?
            state = await client_state(client, wid)
            if state == "waiting_human":
                seen[wid] = "escalated"
        return seen

    def tally(self, ids: list[str], seen: dict[str, str]) -> None:
        r = self.report
        statuses = Counter(seen.values())
        r.completed += statuses.get("completed", 0)
        r.escalated += statuses.get("escalated", 0)
        r.failed += statuses.get("failed", 0) + statuses.get("rejected", 0)
        r.lost += len([w for w in ids if w not in seen])
        keys = Counter(self.effects_file.read_text().split()) if self.effects_file.exists() else {}
        r.effects = sum(keys.values())
        r.duplicated_effects = sum(n - 1 for n in keys.values() if n > 1)
        if self.faults_log.exists():
            fired = Counter(line.split()[1] for line in self.faults_log.read_text().splitlines())
            r.faults_fired = dict(fired)
        if r.completed < len(ids) - r.escalated:
            r.problems.append(f"only {r.completed} of {len(ids)} completed "
                              f"({r.escalated} escalated, {r.failed} failed)")


async def client_state(client: SwitchyardClient, wid: str) -> str:
    """A run's state by its snapshot (written when it waits), "" if it has none."""
    snapshots = Snapshots(await open_bucket(client.js, client.s.bucket(Bucket.WORKFLOWS)),
                          client.s.bucket(Bucket.WORKFLOWS))
    state = await snapshots.get(wid)
    return state.status if state else ""


def _ids(prefix: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"{prefix}-{run}-{i}" for i in range(count)]


# scenarios --------------------------------------------------------------------------------------


async def _agents(run: _Run, n: dict[str, int], deadline: float) -> None:
    nc = await run.connect()
    stop = asyncio.Event()

    async def killer() -> None:  # besides the fault points: SIGKILL a worker every few seconds
        workers = [p for p in run.stack.procs if p.startswith("agent-worker")]  # type: ignore[union-attr]
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(run.rng.uniform(2.0, 4.0)):
                    await stop.wait()
            if not stop.is_set():
                await run.kill(run.rng.choice(workers))

    kills = asyncio.create_task(killer())
    try:
        ids = await run.submit_all(nc, _ids("ag", n["agents"]))
        run.tally(ids, await run.outcomes(nc, ids, deadline))
    finally:
        stop.set()
        await kills
        await nc.close()


async def _supervisor(run: _Run, n: dict[str, int], deadline: float) -> None:
    """Waves of workflows; right after each wave is submitted, with its steps in flight, one of
    the two supervisor replicas is SIGKILLed (and restarted by the keeper)."""
    nc = await run.connect()
    kills = n["supervisor_kills"]
    ids = _ids("sv", n["supervisor"])
    waves = [ids[i::kills + 1] for i in range(kills + 1)]
    try:
        acked: list[str] = []
        for i, wave in enumerate(waves):
            acked += await run.submit_all(nc, wave, inflight=16)
            if i < kills:
                await asyncio.sleep(run.rng.uniform(0.05, 0.5))  # into the wave's first steps
                await run.kill(run.rng.choice(["supervisor", "supervisor-2"]))
        run.tally(acked, await run.outcomes(nc, acked, deadline))
        client = SwitchyardClient(nc, run.settings.subjects)
        kv = await open_bucket(client.js, client.s.bucket(Bucket.WORKFLOW_DEFS), history=5)
        found = definitions_of(WorkflowCatalog(run.settings.load_workflows(), kv))
        for wid in acked:  # each step accepted once: its journal folded again says so
            audit = await client.audit(wid, found)
            oks = Counter(e.step for st in audit.replay.steps for e in st.transition.entries
                          if e.type == "step.ok")
            run.report.steps_accepted_twice += sum(c - 1 for c in oks.values() if c > 1)
            if not audit.ok:
                run.report.problems.append(f"{wid}: audit verify fails: {audit.as_dict()}")
            if len(oks) != run.steps:
                trail = [(st.read.kind, st.read.record.seq, [e.type + ":" + e.step
                                                             for e in st.transition.entries])
                         for st in audit.replay.steps]
                run.report.problems.append(
                    f"{wid}: {len(oks)} of {run.steps} steps recorded ok; journal {trail}")
        if run.report.kills < kills:
            run.report.problems.append(f"only {run.report.kills} supervisor kills happened")
        if run.report.steps_accepted_twice:
            run.report.problems.append(f"{run.report.steps_accepted_twice} steps accepted twice")
    finally:
        await nc.close()


async def _nats(run: _Run, n: dict[str, int], deadline: float) -> None:
    nc = await run.connect()

    async def restart() -> None:
        assert run.nats is not None
        port, store = run.nats.port, run.tmp / "nats"
        await run.nats.kill()
        run.report.kills += 1
        await asyncio.sleep(1.0)  # the outage: nothing answers for a second
        run.nats = await NatsServer(port=port, store_dir=store, sync_always=True).start()
        run.report.restarts += 1

    try:
        ids = await run.submit_all(nc, _ids("nt", n["nats"]), midway=restart)
        run.tally(ids, await run.outcomes(nc, ids, deadline))
    finally:
        await nc.close()


async def _poison(run: _Run, n: dict[str, int], deadline: float) -> None:
    assert run.stack is not None
    nc = await run.connect()
    js = nc.jetstream()
    s: Subjects = run.settings.subjects
    pids = {name: p.pid for name, p in run.stack.procs.items()}
    forged = grants.Signer(grants.new_seed())
    good_task = Task(id="px:s0:1", workflow_id="px", workflow="chaos", step="s0", role="worker",
                     attempt=1, input={"n": 0})
    bad: list[tuple[str, bytes, dict[str, str]]] = []
    for i in range(n["poison"]):
        kind = i % 5
        subject = (s.task("worker"), s.result("px", "worker"), s.submit(f"px{i}"),
                   s.decision("px"))[i % 4]
        if kind == 0:
            body = b"\x00\xffnot json at all" + bytes([i])
        elif kind == 1:
            body = b'{"pad": "' + b"x" * 300_000 + b'"}'
        elif kind == 2:
            body = b'{"protocol": "9.0", "id": "x"}'
        elif kind == 3:
            body = b'{"protocol": "1.0", "unexpected": [1, 2, 3]}'
        else:  # a well-formed task under a forged grant
            now = time.time()
            token = forged.mint(grants.Grant(id="f", workflow_id="px", task_id="px:s0:1",
                                             role="worker", tools=["record_effect"], budget=9,
                                             issued_at=now, expires_at=now + 60, issuer=""))
            body = codec.encode(msgspec.structs.replace(good_task, grant=token))
            subject = s.task("worker")
        bad.append((subject, body, {MSG_ID: f"poison-{i}", PROTOCOL: "1.0"}))
    before = (await js.stream_info(s.stream("dlq"))).state.messages
    for subject, body, headers in bad:
        await js.publish(subject, body, headers=headers)
    run.report.bad_inputs = len(bad)
    dlq = await js.subscribe(s.all("dlq"), ordered_consumer=True)
    try:
        async with asyncio.timeout(30):
            seen = 0
            while seen < before + len(bad):
                msg = await dlq.next_msg(timeout=None)
                seen += 1
                if seen > before and not (msg.headers or {}).get("Sy-Dlq-Reason"):
                    run.report.problems.append(f"a dead letter without a reason: {msg.subject}")
    except TimeoutError:
        pass
    finally:
        await dlq.unsubscribe()
    run.report.dead_lettered = (await js.stream_info(s.stream("dlq"))).state.messages - before
    try:
        ids = await run.submit_all(nc, _ids("gd", n["good"]))
        run.tally(ids, await run.outcomes(nc, ids, deadline))
    finally:
        await nc.close()
    if run.report.dead_lettered != len(bad):
        run.report.problems.append(
            f"{run.report.dead_lettered} of {len(bad)} bad inputs were dead-lettered")
    now_pids = {name: p.pid for name, p in run.stack.procs.items()}
    if now_pids != pids or run.report.restarts:
        run.report.problems.append(f"processes restarted: {run.report.processes_restarted}")


async def run_scenario(name: str, *, scale: str = "ci", seed: int = 1) -> ChaosReport:
    if name == "cluster":  # a bus of three servers: its own module (which builds on this one)
        from switchyard.chaos.cluster import run_cluster

        return await run_cluster(scale=scale, seed=seed)
    n = SIZES[scale]
    report = ChaosReport(scenario=name, seed=seed, scale=scale, time_bound_s=TIME_BOUND_S[scale])
    faults: dict[str, float] = {}
    replicas: dict[str, int] = {}
    if name == "agents":
        # each point must fire at least once: with 150 tasks, 5 % leaves ~0.05 % odds it does not
        p = 0.05 if scale == "ci" else 0.03
        faults = {"agent.before_tool_call": p, "agent.after_tool_call": p, "agent.before_ack": p}
        replicas = {"agent-worker": 3}
    elif name == "supervisor":
        faults = {"supervisor.after_fold": 0.01, "supervisor.before_ack": 0.01}
        replicas = {"supervisor": 2, "agent-worker": 2}
    steps = 5 if name == "supervisor" else 1
    started = time.monotonic()
    deadline = started + report.time_bound_s
    with tempfile.TemporaryDirectory(prefix=f"switchyard-chaos-{name}-") as tmp:
        run = _Run(report, Path(tmp), faults, workflow_steps=steps, replicas=replicas)
        try:
            await run.start()
            scenario = {"agents": _agents, "supervisor": _supervisor, "nats": _nats,
                        "poison": _poison}[name]
            await scenario(run, n, deadline)
        finally:
            await run.stop()
    report.elapsed_s = round(time.monotonic() - started, 1)
    report.check()
    return report


def reports_json(reports: list[ChaosReport]) -> bytes:
    return msgspec.json.format(msgspec.json.encode([r.as_dict() for r in reports]), indent=2)


