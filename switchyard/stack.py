"""LocalStack: the whole deployment on one machine, each part its own process.

An embedded ``nats-server`` (when nothing answers at ``NATS_URL``), then the supervisor, the tool
host and one process per agent role, started as ``python -m switchyard …`` exactly as they would
be deployed, logging to ``<data dir>/logs``. Ready when every part answers ``$SRV.INFO``.

``secure=True`` runs the embedded server under the authorization ``switchyard nats-config``
generates from the policy (keys in ``<data dir>/secure``): the admin identity provisions the streams
and buckets, and every process connects as its own identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter
from types import TracebackType
from urllib.parse import urlparse

import nats
from nats.aio.client import Client

from switchyard import credentials
from switchyard.client import SwitchyardClient
from switchyard.natsd import NatsServer
from switchyard.protocol.bus.component import servers
from switchyard.protocol.bus.provision import check_layout, provision
from switchyard.protocol.errors import ConfigError
from switchyard.settings import Settings
from switchyard.supervisor import authz

ROLES = ("triage", "retrieval", "action", "compliance", "reviewer")


async def connect_running(settings: Settings, doing: str) -> Client:
    """A connection to the stack already running at ``NATS_URL``, as the identity
    ``SWITCHYARD_NKEY_FILE`` names; ``ConfigError`` saying what ``--connect`` does if nothing
    answers there."""
    if not await nats_answers(settings.nats_url):
        raise ConfigError(f"no NATS server answers at {settings.nats_url}: --connect {doing} "
                          "on a stack already running there")
    return await credentials.connect_or_refuse(servers(settings.nats_url),
                                               settings.connect_options())


async def nats_answers(url: str, timeout: float = 1.0) -> bool:
    """True if a NATS server greets us (``INFO {…}``) at ``url``'s host and port (at one of
    them, for a list of a cluster's nodes)."""
    for one in servers(url):
        if await _answers(one, timeout):
            return True
    return False


async def _answers(url: str, timeout: float) -> bool:
    parsed = urlparse(url)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                parsed.hostname or "127.0.0.1", parsed.port or 4222
            )
            try:
                greeting = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return greeting.startswith(b"INFO ")


async def stop_processes(procs: list[asyncio.subprocess.Process], timeout: float = 15.0) -> None:
    """SIGTERM them all (they drain at once), then wait for each; kill one still there after
    ``timeout``."""
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


class LocalStack:
    def __init__(
        self, settings: Settings, *, roles: tuple[str, ...] = ROLES,
        agents: dict[str, str] | None = None, toolhost: bool = True, secure: bool = False,
        env: dict[str, str] | None = None, replicas: dict[str, int] | None = None,
        toolhost_args: tuple[str, ...] = (), console: bool = False,
    ) -> None:
        """``agents`` maps role to ``module:attr`` (default: the built-in agents of ``roles``);
        ``env`` is added to every process's environment; ``replicas`` runs more than one of a
        part (``{"supervisor": 2, "agent-triage": 3}``; the others are named ``supervisor-2``…)."""
        self.metrics_ports: dict[str, int] = {}  # where each process serves /metrics
        self.env = env or {}
        self.replicas = replicas or {}
        self.toolhost_args = toolhost_args
        self.console = console  # the web console too (a process, not a $SRV service)
        self._args: dict[str, tuple[str, ...]] = {}
        self.incarnations: dict[str, int] = {}
        self._identity: dict[str, str] = {}
        self.settings = settings
        self.agents = agents or {role: role for role in roles}
        self.roles = tuple(self.agents)
        self.toolhost = toolhost
        self.nats: NatsServer | None = None
        self.url = settings.nats_url
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.log_dir = settings.data_dir / "logs"
        self._logs: list[object] = []
        self.secure = secure
        self.server_log: list[str] = []  # the embedded server's log, kept after it stops
        self.creds = credentials.Credentials(settings.data_dir / "secure")

    @property
    def expected_services(self) -> set[str]:
        s = self.settings.subjects
        names = {s.service("supervisor"), *(s.service(f"agent-{r}") for r in self.roles)}
        return names | ({s.service("toolhost")} if self.toolhost else set())

    def _expected_instances(self) -> Counter[str]:
        """How many instances of each service the processes started should answer as."""
        s = self.settings.subjects
        return Counter(s.service(self._identity.get(name, name)) for name in self.procs
                       if name != "console")

    def connect_options(self, identity: str) -> dict[str, object]:
        """How ``identity`` connects to this stack's bus (nothing special unless secure)."""
        return self.creds.connect_options(identity) if self.secure else {}

    def violations(self) -> list[str]:
        """Permission violations the embedded server logged so far."""
        return [line for line in (self.nats.log if self.nats else self.server_log)
                if "Violation" in line]

    async def start(self, ready_timeout: float = 60.0) -> LocalStack:
        answering = await nats_answers(self.url)
        if self.secure and answering:
            raise ConfigError(
                f"a NATS server already answers at {self.url}; --secure runs its own under the "
                "generated authorization (run `switchyard nats-config` to secure an existing one)")
        if not answering and self.settings.replicas > 1:
            raise ConfigError(
                f"SWITCHYARD_REPLICAS={self.settings.replicas} needs a NATS cluster of at least "
                f"that many nodes, and nothing answers at {self.url}; the embedded server is one "
                "node (start a cluster: `switchyard nats-config --cluster 3`)")
        if not answering:
            port = urlparse(self.url).port or 4222
            auth = ""
            if self.secure:
                _, queues = authz.deployment_of(self.settings.load_workflows().values())
                ids = authz.identities(self.settings.load_policy(), self.roles,
                                        self.settings.subjects, queues)
                auth = authz.authorization(ids, self.creds.public_key)
            self.nats = NatsServer(
                port=port, store_dir=self.settings.data_dir / "nats",
                sync_always=self.settings.nats_sync == "always", config_extra=auth,
            )
            await self.nats.start()
            self.url = self.nats.url
        if self.secure:
            await self._provision()
        nc = await nats.connect(servers(self.url), **self.connect_options(authz.CONSOLE))
        try:
            await check_layout(nc.jetstream(), self.settings.subjects)  # before anything starts
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.settings.load_seed()  # created once, before any process needs it
            await self._spawn_all("supervisor", "supervisor", "run")
            if self.toolhost:
                await self._spawn_all("toolhost", "tools", "run", *self.toolhost_args)
            for role, target in self.agents.items():
                await self._spawn_all(f"agent-{role}", "agent", "run", target)
            if self.console:
                self._identity["console"] = authz.WEB_CONSOLE
                await self._spawn("console", "console")
            await self._wait_ready(nc, ready_timeout)
        except BaseException:
            await nc.close()
            await self.stop()
            raise
        await nc.close()
        return self

    async def _provision(self) -> None:
        nc = await nats.connect(servers(self.url), **self.connect_options(authz.ADMIN))
        try:
            await provision(nc.jetstream(), self.settings.subjects,
                                        replicas=self.settings.replicas,
                                        trail_max_age=self.settings.trail_max_age_s)
        finally:
            await nc.close()

    async def _spawn_all(self, name: str, *args: str) -> None:
        for n in range(1, self.replicas.get(name, 1) + 1):
            replica = name if n == 1 else f"{name}-{n}"
            self._identity[replica] = name  # replicas share their part's identity on the bus
            await self._spawn(replica, *args)

    async def respawn(self, name: str) -> asyncio.subprocess.Process:
        """Start process ``name`` again (after it died) with the same command."""
        await self._spawn(name, *self._args[name])
        return self.procs[name]

    async def _spawn(self, name: str, *args: str) -> None:
        self._args[name] = args
        run = self.incarnations[name] = self.incarnations.get(name, 0) + 1
        port = self.settings.metrics_port
        index = list(self.procs).index(name) if name in self.procs else len(self.procs)
        metrics = str(port + index) if port else "0"  # one port per process, in order
        if port:
            self.metrics_ports[name] = port + index
        env = {**os.environ, "NATS_URL": self.url, "SWITCHYARD_METRICS_PORT": metrics,
               "SWITCHYARD_PARENT_PID": str(os.getpid()),
               "SWITCHYARD_DATA_DIR": str(self.settings.data_dir),
               "SWITCHYARD_PREFIX": self.settings.prefix,
               "SWITCHYARD_WORKFLOWS": self.settings.workflows,
               "SWITCHYARD_CONCURRENCY": str(self.settings.concurrency),
               "SWITCHYARD_RETENTION_S": str(self.settings.retention_s),
               "SWITCHYARD_TRAIL_MAX_AGE_S": str(self.settings.trail_max_age_s),
               "SWITCHYARD_REPLICAS": str(self.settings.replicas),
               "SWITCHYARD_PUBLISH_TIMEOUT_S": str(self.settings.publish_timeout_s),
               "SWITCHYARD_FAULT_NAME": name, "SWITCHYARD_FAULT_RUN": str(run), **self.env}
        if self.secure:
            env["SWITCHYARD_NKEY_FILE"] = str(self.creds.seed_file(self._identity.get(name, name)))
        log = open(self.log_dir / f"{name}.log", "ab")
        self._logs.append(log)
        # a session of its own: a terminal's Ctrl-C reaches `up` alone, which then stops each
        # process once (a second signal would skip its drain); a dead parent is noticed anyway
        self.procs[name] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "switchyard", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            start_new_session=True,
        )

    async def _wait_ready(self, nc: Client, timeout: float) -> None:
        client = SwitchyardClient(nc, self.settings.subjects)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for name, proc in self.procs.items():
                        if proc.returncode is not None:
                            raise RuntimeError(
                                f"{name} exited with code {proc.returncode} at start; "
                                f"see {self.log_dir / (name + '.log')}:\n{self.tail(name)}"
                            )
                    # every replica: they share their part's name, and one answering says
                    # nothing of another still starting (which could yet die of its start)
                    seen = Counter(s["name"] for s in await client.services(window=0.3))
                    if all(seen[name] >= n for name, n in self._expected_instances().items()):
                        return
        except TimeoutError:
            raise RuntimeError(
                f"the stack was not ready within {timeout:g} s; logs in {self.log_dir}"
            ) from None

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every process (they drain), kill what is left after ``timeout``."""
        await stop_processes(list(self.procs.values()), timeout)
        self.procs.clear()
        for log in self._logs:
            log.close()  # type: ignore[attr-defined]
        self._logs.clear()
        if self.nats is not None:
            await self.nats.stop()
            self.server_log = self.nats.log
            self.nats = None

    async def __aenter__(self) -> LocalStack:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

