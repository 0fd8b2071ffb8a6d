"""Containers for real: podman (or anything Docker-compatible through its socket), the images of
``compose.yaml`` built here when no registry serves them (``deploy/podman/images.sh``).

On a machine without podman these tests skip, saying why; ``.ci/run`` sets
``SWITCHYARD_TESTS_REQUIRE=podman``, which turns that skip into a failure."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from switchyard.natsd import free_ports
from tests.parts import require

from ..conftest import nats_image

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
PODMAN_COMPOSE = str(Path(sys.executable).parent / "podman-compose")
CLI = str(Path(sys.executable).parent / "switchyard")


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    def check(self) -> Ran:
        assert self.code == 0, f"exit {self.code}\nstdout: {self.stdout[-3000:]}\n" \
                               f"stderr: {self.stderr[-3000:]}"
        return self


async def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
              cwd: Path = ROOT) -> Ran:
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


@pytest.fixture(scope="session")
async def podman() -> str:
    """podman that runs containers here, and the images compose.yaml names."""
    binary = shutil.which("podman")
    if binary is None:
        require("podman", "podman is not installed (apt-get install podman runc buildah)")
    assert binary is not None
    if not Path(PODMAN_COMPOSE).exists():
        require("podman", "podman-compose is not installed in this venv (pip install -e '.[dev]')")
    probe = await run(binary, "info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60)
    if probe.code != 0:
        require("podman", f"`podman info` fails: {probe.stderr.strip()[-500:]} (a host like the CI "
                          "machine needs CONTAINERS_CONF=deploy/podman/containers.conf)")
    want = ["docker.io/library/python:3.11-slim-bookworm", nats_image()]
    have = [(await run(binary, "image", "exists", image, timeout=30)).code == 0 for image in want]
    if shutil.which("debootstrap"):  # builds what no registry gave us, refreshes .wheels/
        (await run("bash", str(ROOT / "deploy/podman/images.sh"), sys.executable,
                   timeout=600)).check()
    elif not all(have):
        require("podman", f"images {want} are neither here nor buildable (no debootstrap); pull "
                          "them, or install debootstrap and run deploy/podman/images.sh")
    return binary


@dataclass
class Compose:
    """One compose project of ``compose.yaml`` itself, under a name of its own."""

    podman: str
    project: str = field(default_factory=lambda: f"sytest{uuid.uuid4().hex[:8]}")
    port: int = field(default_factory=lambda: free_ports(1))
    console_port: int = field(default_factory=lambda: free_ports(1))
    a2a_port: int = field(default_factory=lambda: free_ports(1))
    settings: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=lambda: ["compose.yaml"])

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHYARD_", "NATS_"))}
        return {**keep, "SWITCHYARD_NATS_PORT": str(self.port),
                "SWITCHYARD_CONSOLE_HOST_PORT": str(self.console_port),
                "SWITCHYARD_A2A_HOST_PORT": str(self.a2a_port), **self.settings}

    async def compose(self, *args: str, timeout: float = 600) -> Ran:
        files = [arg for name in self.files for arg in ("-f", str(ROOT / name))]
        return await run(PODMAN_COMPOSE, *files, "-p", self.project, *args, env=self.env(),
                         timeout=timeout)

    async def containers(self, service: str = "", *, all_states: bool = True) -> list[dict[str, object]]:
        args = [self.podman, "ps", "--format", "json",
                "--filter", f"label=io.podman.compose.project={self.project}"]
        if service:
            args += ["--filter", f"label=io.podman.compose.service={service}"]
        if all_states:
            args.append("-a")
        found: list[dict[str, object]] = json.loads((await run(*args, timeout=60)).check().stdout
                                                    or "[]")
        return found

    async def inspect(self, name: str) -> dict[str, object]:
        found = json.loads((await run(self.podman, "inspect", name, timeout=60)).check().stdout)
        assert isinstance(found, list)
        item: dict[str, object] = found[0]
        return item

    async def down(self) -> None:
        """``down -v --remove-orphans``, as docs/deploy.md says. podman-compose 1.6 stops only
        the first replica of a scaled service and removes the others as orphans, in no fixed
        order: when that leaves a volume whose container was still there, a second pass removes
        it."""
        for _ in range(2):
            (await self.compose("down", "-v", "-t", "5", "--remove-orphans")).check()
            if not await self.leftovers():
                return

    async def leftovers(self) -> list[str]:
        """Whatever of this project is still on the machine: containers, volumes, networks."""
        names = [str(c.get("Names")) for c in await self.containers()]
        for kind in ("volume", "network"):
            listed = await run(self.podman, kind, "ls", "--format", "{{.Name}}", timeout=60)
            names += [n for n in listed.check().stdout.split() if n.startswith(self.project)]
        return names


@pytest.fixture
async def compose(podman: str) -> AsyncIterator[Compose]:
    project = Compose(podman)
    try:
        yield project
    finally:  # torn down whatever happened, so a failed run leaves nothing behind
        await project.down()


@pytest.fixture(scope="session")
async def docker_socket(podman: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """podman's Docker-compatible API on a socket of this session's own, for testcontainers
    (its reaper off: the fixtures tear down what they start)."""
    sock = tmp_path_factory.mktemp("podman") / "docker.sock"
    proc = await asyncio.create_subprocess_exec(
        podman, "system", "service", "--time=0", f"unix://{sock}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(30):
            while not sock.exists():
                if proc.returncode is not None:
                    raise RuntimeError(f"podman system service exited {proc.returncode}")
                await asyncio.sleep(0.05)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        await proc.wait()
