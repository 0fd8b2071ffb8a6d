"""The bridge (``switchyard agent run --a2a URL --role R``) against a real A2A server written with
a2a-sdk's own server, run as a process of its own; and the round trip: a workflow of one
deployment calling another deployment's workflow through the bridge and that one's gateway."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from switchyard.client import SwitchyardClient
from switchyard.gateway.keys import Keys
from switchyard.natsd import free_ports
from switchyard.settings import Settings
from switchyard.stack import LocalStack

from .conftest import CLI, Proc, answering, spawn, stack_env, stop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
ASK = "name: ask\nsteps:\n  - {name: count, role: words, threshold: 0.5}\n"
PARTNER = ("name: partner\nsteps:\n  - {name: elsewhere, role: partner, threshold: 0.5, "
           "timeout_s: 120}\n")


async def trace(stack: LocalStack, wid: str) -> str:
    ran = await asyncio.create_subprocess_exec(
        CLI, "trace", wid, env={**os.environ, **stack_env(stack, "console")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await ran.communicate()
    assert ran.returncode == 0, out.decode()
    return out.decode()


@pytest.fixture(scope="module")
async def remote(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The word counter: an A2A agent of a2a-sdk's own server, as its own process."""
    pytest.importorskip("a2a", reason="the a2a extra: pip install -e '.[a2a]'")
    port = free_ports(1)
    log = tmp_path_factory.mktemp("remote") / "remote.log"
    p = await spawn(sys.executable, "-m", "tests.gateway.remote_agent", str(port), env={},
                    log=log)
    try:
        await answering(f"http://127.0.0.1:{port}/.well-known/agent-card.json", p)
        yield f"http://127.0.0.1:{port}/"
    finally:
        await stop(p)


async def bridged(stack: LocalStack, url: str, role: str, *extra: str) -> Proc:
    p = await spawn(CLI, "agent", "run", "--a2a", url, "--role", role, *extra,
                    env=stack_env(stack, f"agent-{role}"),
                    log=stack.log_dir / f"bridge-{role}.log")
    nc = await nats.connect(stack.url)
    try:
        client = SwitchyardClient(nc, stack.settings.subjects)
        async with asyncio.timeout(30):  # serving once $SRV lists it
            while not any(s["name"] == stack.settings.subjects.service(f"agent-{role}")
                          for s in await client.services(window=0.2)):
                if p.proc.returncode is not None:
                    raise AssertionError(p.tail())
    finally:
        await nc.close()
    return p


async def run(stack: LocalStack, workflow: str, data: dict[str, Any]) -> tuple[str, Any]:
    nc = await nats.connect(stack.url)
    try:
        client = SwitchyardClient(nc, stack.settings.subjects)
        wid = await client.submit(workflow, data)
        return wid, await client.wait(wid, timeout=120)
    finally:
        await nc.close()


async def test_a_step_on_a_remote_a2a_agent_completes_and_is_in_the_trace(
    remote: str, tmp_path: Path,
) -> None:
    flow = tmp_path / "ask.yaml"
    flow.write_text(ASK)
    settings = Settings(nats_url=f"nats://127.0.0.1:{free_ports(1)}", data_dir=tmp_path,
                        prefix=f"b{uuid.uuid4().hex[:6]}", workflows=str(flow), policy="none")
    async with LocalStack(settings, roles=("triage",)) as stack:
        bridge = await bridged(stack, remote, "words")
        try:
            wid, done = await run(stack, "ask", {"text": "count these four words"})
            assert done.status == "completed", done
            output = done.outcome.output
            assert (output["words"], output["a2a"]["state"]) == (4, "completed")
            assert isinstance(output["words"], int)  # a whole number stays one
            assert output["a2a"]["agent"] == "Word counter" and output["a2a"]["task_id"]
            assert done.outcome.steps[0].confidence == 0.95  # the reply's own
            shown = await trace(stack, wid)
            assert "count #1 -> words" in shown and "a2a:127.0.0.1" in shown, shown
            # the remote agent asks for input: the task goes to a person
            _, asked = await run(stack, "ask", {"text": "please ask me first"})
            assert (asked.status, asked.kind) == ("escalated", "needs_human")
            assert "Word counter asks: which words?" in asked.reason
        finally:
            await stop(bridge)


async def test_a_workflow_calls_another_deployments_workflow_through_bridge_and_gateway(
    tmp_path: Path,
) -> None:
    pytest.importorskip("a2a", reason="the a2a extra: pip install -e '.[a2a]'")
    there_port = free_ports(3)
    gw_port, here_port = there_port + 1, there_port + 2
    there = Settings(nats_url=f"nats://127.0.0.1:{there_port}", data_dir=tmp_path / "there",
                     prefix="there")
    flow = tmp_path / "partner.yaml"
    flow.write_text(PARTNER)
    here = Settings(nats_url=f"nats://127.0.0.1:{here_port}", data_dir=tmp_path / "here",
                    prefix="here", workflows=str(flow), policy="none")
    key = Keys(there.a2a_keys_file).add("here", ["support"])
    async with LocalStack(there) as far, LocalStack(here, roles=("triage",)) as near:
        gateway = await spawn(CLI, "a2a", "serve", env={
            **stack_env(far, "a2a-gateway"), "SWITCHYARD_A2A_PORT": str(gw_port)},
            log=far.log_dir / "a2a.log")
        bridge = None
        try:
            await answering(f"http://127.0.0.1:{gw_port}/healthz", gateway)
            bridge = await bridged(near, f"http://127.0.0.1:{gw_port}/", "partner",
                                   "--a2a-key", key, "--skill", "support")
            wid, done = await run(near, "partner", {
                "text": "I was charged twice for my subscription",
                "customer_email": "ada@example.com"})
            assert done.status == "completed", done
            output = done.outcome.output
            assert output["reply"].startswith("Hello") and output["ticket_id"]
            assert output["a2a"]["agent"] == "Switchyard"
            assert "elsewhere #1 -> partner" in await trace(near, wid)
            # the far run is the gateway's task, a run of its support workflow, to its end
            nc = await nats.connect(far.url)
            try:
                far_out = await SwitchyardClient(nc, far.settings.subjects).outcome(
                    output["a2a"]["task_id"])
            finally:
                await nc.close()
            assert far_out is not None and far_out.workflow == "support"
            assert far_out.status == "completed" and len(far_out.steps) == 5
        finally:
            if bridge is not None:
                await stop(bridge)
            await stop(gateway)
