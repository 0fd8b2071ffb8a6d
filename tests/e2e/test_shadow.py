"""Shadow agents: a second version of a role works copies of its tasks beside the live agent;
its outputs and tool calls are recorded and scored, and nothing it does changes a run, counts as
a result, or has an effect."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client

from switchyard.client import SwitchyardClient
from switchyard.evals.shadow import shadow_records
from switchyard.protocol import codec, grants
from switchyard.protocol.errors import ConfigError
from switchyard.protocol.messages import Task
from switchyard.settings import Settings
from switchyard.stack import LocalStack
from switchyard.supervisor.authz import CONSOLE

from .conftest import CLI, run_cli

pytestmark = pytest.mark.e2e

TICKETS = [  # (id, email, text, what the live run does)
    ("small", "grace@example.com", "Please refund 40 EUR for the duplicate charge on my card.",
     "completed"),
    ("held", "barbara@example.com", "Please refund 250 EUR for the outage last week.",
     "escalated"),
    ("plain", "ada@example.com", "The desktop app crashes every time I open it after the update.",
     "completed"),
]


async def _status(nc: Client, prefix: str) -> dict[str, object]:
    reply = await nc.request(f"{prefix}.supervisor.status", b"", timeout=5)
    status: dict[str, object] = json.loads(reply.data)
    return status


async def _until(what: str, check: object, timeout: float = 30.0) -> None:
    """Until ``check()`` (a coroutine function) is true; bounded."""
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _store_rows(data: Path) -> tuple[list[str], list[str]]:
    db = sqlite3.connect(data / "support.db")
    try:
        tickets = [r[0] for r in db.execute("SELECT id FROM tickets")]
        refunds = [r[0] for r in db.execute("SELECT id FROM refunds")]
    finally:
        db.close()
    return tickets, refunds


@contextlib.asynccontextmanager
async def shadow_of(role: str, running: LocalStack, env: dict[str, str]
                    ) -> AsyncIterator[tuple[Client, SwitchyardClient]]:
    """A shadow agent of ``role`` as its own process, as a user starts it, once the supervisor
    sees it; and a connection as the console."""
    s = running.settings.subjects
    shadow = await asyncio.create_subprocess_exec(
        CLI, "agent", "run", role, "--shadow", env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    nc = await nats.connect(running.url, **running.connect_options(CONSOLE))
    try:
        async def shadowed() -> bool:
            return role in (await _status(nc, s.prefix))["shadowed"]  # type: ignore[operator]

        await _until("the supervisor to see the shadow", shadowed)
        yield nc, SwitchyardClient(nc, s)
    finally:
        shadow.terminate()
        await shadow.wait()
        await nc.close()


@pytest.fixture
async def stack(nats_url: str, tmp_path: Path) -> AsyncIterator[tuple[LocalStack, dict[str, str]]]:
    prefix = f"h{uuid.uuid4().hex[:8]}"
    settings = Settings(nats_url=nats_url, prefix=prefix, data_dir=tmp_path / "data")
    env = {**os.environ, "NATS_URL": nats_url, "SWITCHYARD_PREFIX": prefix,
           "SWITCHYARD_DATA_DIR": str(tmp_path / "data")}
    async with LocalStack(settings) as running:
        yield running, env


async def test_a_shadow_is_scored_against_the_live_agent_and_changes_nothing(
        stack: tuple[LocalStack, dict[str, str]]) -> None:
    running, env = stack
    data = running.settings.data_dir
    async with shadow_of("action", running, env) as (_, client):
        ids = {}
        for name, email, text, _ in TICKETS:
            ids[name] = await client.submit("support", {"text": text, "customer_email": email},
                                            workflow_id=f"shadow-{uuid.uuid4().hex[:6]}-{name}")
        for name, _, _, expected in TICKETS:
            assert (await client.wait(ids[name], timeout=60)).status == expected, name

        async def recorded() -> bool:
            return len(await shadow_records(client, "action")) >= len(TICKETS)

        await _until("the shadow's records", recorded)
        records = {r.workflow_id: r for r in await shadow_records(client, "action")}
        with pytest.raises(ConfigError, match="took over 0 s"):  # a sentence, not a traceback
            await shadow_records(client, "action", timeout=0)
        # the shadow ran every call dry: the refund it "issued" is a dry run's, the one live
        # waits for is marked as what a person would have been asked for
        small, held = records[ids["small"]], records[ids["held"]]
        assert all(c.dry for r in records.values() for c in r.calls)
        assert small.output is not None and small.output["refund"]["refund_id"].startswith("DRY-")
        assert [c.tool for c in held.calls if c.needs_approval] == ["propose_refund"]
        # ... and nothing it did happened: one refund (the live small one), three live tickets
        tickets, refunds = _store_rows(data)
        assert len(refunds) == 1 and len(tickets) == len(TICKETS)
        assert not any(x.startswith("DRY-") for x in tickets + refunds)
        # no journal holds a result of the shadow's, and no tool-call record names its calls
        for wid in ids.values():
            results = await client.results(wid)
            assert {r.agent for r in results}.isdisjoint({small.instance})
            assert len([r for r in results if r.step == "action"]) == 1
        called = [e for wid in ids.values() for ev in await client.events(wid)
                  for e in ev.entries if e.type == "tool.called" and e.data["tool"] == "propose_refund"]
        assert len(called) == 1
        # the comparison, as a user asks for it
        res = await run_cli("eval", "shadow", "--json", env=env)
        assert res.code == 0, res.stderr
        action = json.loads(res.stdout)["shadows"]["action@1.0.0"]
        assert action["copies"] == len(TICKETS) and action["matched"] == len(TICKETS)
        assert action["agreement"] == 1.0, action["disagreements"]
        assert action["status_agreement"] == 1.0
        assert action["would_wait_for_approval"] == 1 and action["shadow_errors"] == 0
        shown = await run_cli("eval", "shadow", env=env)
        assert "shadow agents against the live ones" in shown.stdout


async def test_a_shadow_refuses_a_copy_whose_grant_could_act(
        stack: tuple[LocalStack, dict[str, str]]) -> None:
    """A copy carrying a live (not dry) grant is dead-lettered by the shadow, never worked."""
    running, env = stack
    s = running.settings.subjects
    async with shadow_of("action", running, env) as (nc, client):
        signer = grants.Signer(running.settings.load_seed())
        now = time.time()
        live = grants.Grant(id="w1:action:1", workflow_id="w1", task_id="w1:action:1",
                            role="action", tools=["propose_refund"], budget=4, issued_at=now,
                            expires_at=now + 60, issuer=signer.public_key)
        task = Task(id="w1:action:1", workflow_id="w1", workflow="support", step="action",
                    role="action", attempt=1, input={"text": "refund 40 EUR", "intent": "billing"},
                    grant=signer.mint(live), deadline=now + 60)
        await nc.jetstream().publish(s.shadow_task("action"), codec.encode(task))

        async def dead_lettered() -> bool:
            return any("grant is for dry 'false', not 'true'" in d.reason
                       for d in await client.dead_letters(kind="shadow"))

        await _until("the copy's dead letter", dead_lettered)
        assert await shadow_records(client, "action") == []
        assert _store_rows(running.settings.data_dir)[1] == []
        # and the other way: a dry grant on the live subject is refused by the live agent
        dry = msgspec.structs.replace(live, id="dry:w2:action:1", workflow_id="w2",
                                      task_id="w2:action:1", budget=0, dry=True)
        stray = msgspec.structs.replace(task, id="w2:action:1", workflow_id="w2",
                                        grant=signer.mint(dry))
        await nc.jetstream().publish(s.task("action"), codec.encode(stray))

        async def refused_live() -> bool:
            return any("grant is for dry 'true', not 'false'" in d.reason
                       for d in await client.dead_letters(kind="task"))

        await _until("the live agent's dead letter", refused_live)
        assert _store_rows(running.settings.data_dir)[1] == []

