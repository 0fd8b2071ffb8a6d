"""The A2A gateway and bridge as a user runs them: ``switchyard a2a serve`` and ``switchyard
agent run --a2a`` as processes beside a stack, called through a2a-sdk's own client over HTTP on
127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchyard.natsd import free_ports
from switchyard.settings import Settings
from switchyard.stack import LocalStack

CLI = str(Path(sys.executable).parent / "switchyard")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Proc:
    """A process of ours, its log kept beside the stack's."""

    proc: asyncio.subprocess.Process
    log: Path

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


async def spawn(*args: str, env: dict[str, str], log: Path) -> Proc:
    out = open(log, "ab")
    proc = await asyncio.create_subprocess_exec(
        *args, env={**os.environ, **env}, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
        stdout=out, stderr=out)
    out.close()
    return Proc(proc, log)


async def stop(p: Proc) -> None:
    if p.proc.returncode is None:
        p.proc.terminate()
        try:
            async with asyncio.timeout(15):
                await p.proc.wait()
        except TimeoutError:
            p.proc.kill()
            await p.proc.wait()


async def answering(url: str, p: Proc, timeout: float = 30) -> None:
    """Until ``url`` answers 200 (the process has no event to wait on), or the process died."""
    async with httpx.AsyncClient() as http:
        async with asyncio.timeout(timeout):
            while True:
                if p.proc.returncode is not None:
                    raise AssertionError(f"exited {p.proc.returncode}:\n{p.tail()}")
                try:
                    if (await http.get(url)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)


@dataclass
class Gateway:
    stack: LocalStack
    url: str
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    async def replica(self, port: int) -> str:
        """Another gateway process on the same bus; its URL."""
        log = self.stack.log_dir / f"a2a-{port}.log"
        p = await spawn(CLI, "a2a", "serve", env={**self.env, "SWITCHYARD_A2A_PORT": str(port),
                                                  "SWITCHYARD_A2A_URL": f"http://127.0.0.1:{port}/"},
                        log=log)
        self.procs.append(p)
        await answering(f"http://127.0.0.1:{port}/healthz", p)
        return f"http://127.0.0.1:{port}/"


def stack_env(stack: LocalStack, identity: str) -> dict[str, str]:
    s = stack.settings
    env = {"NATS_URL": stack.url, "SWITCHYARD_PREFIX": s.prefix,
           "SWITCHYARD_DATA_DIR": str(s.data_dir), "SWITCHYARD_WORKFLOWS": s.workflows}
    if stack.secure:
        env["SWITCHYARD_NKEY_FILE"] = str(stack.creds.seed_file(identity))
    return env


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """A secured stack and one gateway on it, as its own identity (``a2a-gateway``)."""
    pytest.importorskip("a2a", reason="the a2a extra: pip install -e '.[a2a]'")
    data: Path = tmp_path_factory.mktemp("a2a")
    base = free_ports(4)
    # the support workflow, and a copy that lets A2A callers answer its escalations
    support = (ROOT / "supervisor" / "workflows" / "support.yaml").read_text()
    open_copy = data / "support-open.yaml"
    open_copy.write_text(support.replace("name: support\n", "name: support-open\n", 1)
                         + "a2a_answers: true\n")
    settings = Settings(nats_url=f"nats://127.0.0.1:{base}", data_dir=data, prefix="g2a",
                        workflows=f"support,{open_copy}")
    async with LocalStack(settings, secure=True) as stack:
        env = {**stack_env(stack, "a2a-gateway")}
        gw = Gateway(stack, "", env)
        try:
            gw.url = await gw.replica(base + 1)
            yield gw
        finally:
            for p in gw.procs:
                await stop(p)
        assert stack.violations() == []  # the gateway's identity sufficed, and no more


def keys_file(stack: LocalStack) -> Path:
    return stack.settings.data_dir / "a2a-keys"


async def a2a_client(url: str, key: str = "", *, streaming: bool = False) -> tuple[Any, Any]:
    """The SDK's own client for the gateway at ``url`` (and its HTTP client, to close)."""
    from a2a.client import A2ACardResolver, ClientConfig, ClientFactory

    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"} if key else {},
                             timeout=60)
    card = await A2ACardResolver(http, url).get_agent_card()
    return ClientFactory(ClientConfig(streaming=streaming, httpx_client=http)).create(card), http
