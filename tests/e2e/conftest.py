"""End-to-end fixtures: the stack as separate processes, and the CLI as a user runs it."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from switchyard.settings import Settings
from switchyard.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "switchyard")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@dataclass
class Deployment:
    stack: LocalStack
    settings: Settings
    env: dict[str, str]

    async def cli(self, *args: str, cwd: Path | None = None, timeout: float = 60) -> CliResult:
        return await run_cli(*args, env=self.env, cwd=cwd, timeout=timeout)


async def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None,
                  timeout: float = 60) -> CliResult:
    proc = await asyncio.create_subprocess_exec(
        CLI, *args, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def readme_example(name: str) -> str:
    """The code block that follows ``<!-- example: NAME -->`` in the README."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- example: {re.escape(name)} -->\s*```\w*\n(.*?)```", text, re.S)
    assert m, f"README has no example {name}"
    return m.group(1)


@pytest.fixture(scope="module")
async def deployment(nats_url: str, tmp_path_factory: pytest.TempPathFactory
                     ) -> AsyncIterator[Deployment]:
    data = tmp_path_factory.mktemp("stack")
    prefix = f"e{uuid.uuid4().hex[:8]}"
    settings = Settings(nats_url=nats_url, prefix=prefix, data_dir=data)
    env = {**os.environ, "NATS_URL": nats_url, "SWITCHYARD_PREFIX": prefix,
           "SWITCHYARD_DATA_DIR": str(data)}
    async with LocalStack(settings) as stack:
        yield Deployment(stack, settings, env)
