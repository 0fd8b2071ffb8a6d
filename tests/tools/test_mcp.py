"""Real MCP servers from PyPI (mcp-server-time, mcp-server-git) mounted as Switchyard tools and
called over the bus under grants: no stub."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from switchyard.protocol import Event, Subjects, ToolCall, ToolResult, decode, encode, grants
from switchyard.protocol.errors import ConfigError
from switchyard.protocol.headers import DLQ_CODE
from switchyard.tools import ToolHost, ToolHostConfig, ToolRegistry
from switchyard.tools.mcp import McpBridge, McpServerConfig

Watch = Any


def mint(signer: grants.Signer, tools: list[str]) -> str:
    now = time.time()
    return signer.mint(grants.Grant(id=f"g{now}", workflow_id="w1", task_id="w1:s:1", role="r",
                                    tools=tools, budget=10, issued_at=now, expires_at=now + 60,
                                    issuer=""))


async def call(nc: Client, s: Subjects, tool: str, args: dict[str, Any], grant: str,
               key: str = "") -> ToolResult:
    msg = ToolCall(tool=tool, args=args, grant=grant, task_id="w1:s:1", workflow_id="w1",
                   idempotency_key=key)
    return decode((await nc.request(s.tool(tool, "r"), encode(msg), timeout=20)).data, ToolResult)


@pytest.fixture
async def mounted(
    request: pytest.FixtureRequest, nc: Client, js: JetStreamContext, subjects: Subjects,
    signer: grants.Signer,
) -> AsyncIterator[McpBridge]:
    config: McpServerConfig = request.param or request.getfixturevalue("git_server")
    async with McpBridge(config) as bridge:
        host_config = ToolHostConfig(subjects=subjects, trusted_keys=frozenset({signer.public_key}),
                                     call_timeout=20)
        async with ToolHost(ToolRegistry(bridge.tools), nc=nc, config=host_config):
            yield bridge


TIME = McpServerConfig.parse(f"time={sys.executable} -m mcp_server_time --local-timezone UTC")


@pytest.mark.parametrize("mounted", [TIME], indirect=True)
async def test_mcp_time_server_tools_are_served_under_grants(
    mounted: McpBridge, nc: Client, subjects: Subjects, signer: grants.Signer,
    watch: Callable[[str], Awaitable[Watch]],
) -> None:
    names = {t.name: t for t in mounted.tools}
    assert {"get_current_time", "convert_time"} <= set(names)
    assert names["get_current_time"].risk == "read" and not names["get_current_time"].side_effects
    events = await watch(subjects.event("w1"))
    dlq = await watch(subjects.dlq("tool"))
    grant = mint(signer, ["get_current_time"])
    ok = await call(nc, subjects, "get_current_time", {"timezone": "Europe/Paris"}, grant)
    assert ok.ok and ok.result is not None and "Europe/Paris" in ok.result["content"][0]["text"]
    assert decode((await events.next()).data, Event).entries[0].type == "tool.called"
    bad = await call(nc, subjects, "get_current_time", {}, grant)  # its JSON Schema says no
    assert bad.error is not None and bad.error.code == "invalid_input"
    assert "'timezone' is a required property" in bad.error.message
    assert (await dlq.next()).headers[DLQ_CODE] == "invalid_input"  # type: ignore[index]
    failed = await call(nc, subjects, "get_current_time", {"timezone": "Mars/Olympus"}, grant)
    assert failed.error is not None and failed.error.code == "tool_failed"
    assert "Mars/Olympus" in failed.error.message  # the MCP server's own error, as a sentence
    denied = await call(nc, subjects, "convert_time", {"source_timezone": "UTC", "time": "12:00",
                                                       "target_timezone": "Asia/Tokyo"}, grant)
    assert denied.error is not None and denied.error.code == "tool_not_granted"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("repo")
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "ci@example.com")
    git("config", "user.name", "CI")
    (path / "README").write_text("hello\n")
    git("add", "README")
    git("commit", "-q", "-m", "first commit from the test")
    (path / "notes.txt").write_text("draft\n")
    return path


@pytest.fixture
def git_server(repo: Path) -> McpServerConfig:
    return McpServerConfig(name="git", command=sys.executable,
                           args=["-m", "mcp_server_git", "--repository", str(repo)])


@pytest.mark.parametrize("mounted", [pytest.param(None, id="git")], indirect=True)
async def test_mcp_git_server_reads_and_writes_a_repository_once(
    mounted: McpBridge, repo: Path, nc: Client, subjects: Subjects, signer: grants.Signer,
) -> None:
    tools = {t.name: t for t in mounted.tools}
    assert tools["git_log"].risk == "read" and tools["git_reset"].risk == "critical"
    assert tools["git_commit"].side_effects and not tools["git_commit"].idempotent
    grant = mint(signer, ["git_log", "git_add", "git_commit"])
    log = await call(nc, subjects, "git_log", {"repo_path": str(repo)}, grant)
    assert log.ok and "first commit from the test" in str(log.result)
    add = await call(nc, subjects, "git_add", {"repo_path": str(repo), "files": ["notes.txt"]},
                     grant, key="w1:s:1")
    assert add.ok
    args = {"repo_path": str(repo), "message": "second commit"}
    first = await call(nc, subjects, "git_commit", args, grant, key="w1:s:2")
    again = await call(nc, subjects, "git_commit", args, grant, key="w1:s:2")  # a redelivery
    assert first.ok and again == first
    git = await asyncio.create_subprocess_exec(
        "git", "-C", str(repo), "rev-list", "--count", "HEAD", stdout=asyncio.subprocess.PIPE)
    count, _ = await git.communicate()
    assert count.decode().strip() == "2"  # committed once


def test_mcp_server_spec_is_parsed_or_refused() -> None:
    cfg = McpServerConfig.parse("time=python -m mcp_server_time --local-timezone UTC")
    assert (cfg.name, cfg.command, cfg.args) == (
        "time", "python", ["-m", "mcp_server_time", "--local-timezone", "UTC"])
    with pytest.raises(ConfigError, match="name=command"):
        McpServerConfig.parse("no-equals-sign")


async def test_mcp_server_that_does_not_start_is_a_clear_error() -> None:
    broken = McpServerConfig(name="broken", command=sys.executable,
                             args=["-c", "import sys; sys.exit(3)"])
    with pytest.raises(ConfigError, match="MCP server 'broken' did not start"):
        await McpBridge(broken).start(timeout=20)
