"""The bus enforces the policy: the stack under the authorization ``switchyard nats-config``
generates, every process as its own identity. What the policy forbids, the NATS server refuses;
what a normal run does, it allows (zero violations in the server's log)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import APIError

from switchyard.client import SwitchyardClient
from switchyard.protocol import Subjects, ToolCall, ToolResult, decode, encode, grants
from switchyard.settings import Settings
from switchyard.stack import LocalStack
from switchyard.supervisor import authz
from switchyard.supervisor.policy import load_policy
from switchyard.tools.builtin import SupportStore

from .conftest import CLI, Deployment, free_port, run_cli

pytestmark = pytest.mark.e2e

POLICY = load_policy("support")


@pytest.fixture(scope="module")
async def secured(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    data = tmp_path_factory.mktemp("secure")
    url = f"nats://127.0.0.1:{free_port()}"
    settings = Settings(nats_url=url, data_dir=data, prefix="sy")
    async with LocalStack(settings, secure=True) as stack:
        env = {**os.environ, "NATS_URL": url, "SWITCHYARD_DATA_DIR": str(data),
               "SWITCHYARD_PREFIX": "sy",
               "SWITCHYARD_NKEY_FILE": str(stack.creds.seed_file(authz.CONSOLE))}
        yield Deployment(stack, settings, env)


async def _connect_as(stack: LocalStack, identity: str, errors: list[str],
                      got: asyncio.Event) -> Client:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))
        got.set()

    return await nats.connect(stack.url, error_cb=on_error, allow_reconnect=False,
                              **stack.connect_options(identity))  # type: ignore[arg-type]


async def _await_errors(errors: list[str], got: asyncio.Event, count: int) -> None:
    async with asyncio.timeout(10):
        while len(errors) < count:
            got.clear()
            await got.wait()


async def test_the_demo_runs_under_secure_with_zero_violations(tmp_path: Path) -> None:
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{free_port()}",
           "SWITCHYARD_DATA_DIR": str(tmp_path / "data")}
    res = await run_cli("demo", "--secure", "--json", env=env, cwd=tmp_path, timeout=180)
    assert res.code == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["secure"] is True and report["violations"] == []
    assert report["matched"] == 30  # the same outcomes as on an open bus


async def test_every_role_is_refused_by_the_bus_for_tools_outside_its_grant(
    secured: Deployment,
) -> None:
    stack, s = secured.stack, secured.settings.subjects
    store = SupportStore(secured.settings.data_dir / "support.db")
    refunds = len(store.refunds())
    before = len(stack.violations())
    expected = 0
    for role in POLICY.roles:
        errors: list[str] = []
        got = asyncio.Event()
        nc = await _connect_as(stack, authz.agent_identity(role), errors, got)
        try:
            denied = [t for t in POLICY.tools if t not in POLICY.allowed(role)]
            others = [r for r in POLICY.roles if r != role]
            for tool in denied:  # straight onto the tool subject, as a compromised agent would
                call = ToolCall(tool=tool, args={"customer_id": "C-1001", "amount": 5000,
                                                 "reason": "injected"},
                                grant="", task_id="w:x:1", workflow_id="w")
                await nc.publish(s.tool(tool, role), encode(call))
            for tool in POLICY.allowed(role):  # its own tools, under another role's name
                await nc.publish(s.tool(tool, others[0]), b"{}")
            count = len(denied) + len(POLICY.allowed(role))
            await _await_errors(errors, got, count)
            assert all("permissions violation for publish" in e.lower() for e in errors), errors
            expected += count
        finally:
            await nc.close()
    logged = stack.violations()[before:]
    assert len(logged) == expected and all("Publish Violation" in line for line in logged)
    assert len(store.refunds()) == refunds  # no side effect reached the tool host
    store.close()


async def test_an_agent_cannot_take_another_roles_tasks_or_read_its_replies(
    secured: Deployment,
) -> None:
    stack, s = secured.stack, secured.settings.subjects
    errors: list[str] = []
    got = asyncio.Event()
    nc = await _connect_as(stack, authz.agent_identity("triage"), errors, got)
    try:
        with pytest.raises(Exception):  # noqa: B017 - the server answers nothing
            await nc.jetstream().pull_subscribe(s.task("action"), durable="action",
                                                stream=s.stream("tasks"))
        await nc.subscribe("_INBOX.agent-action.>")  # another identity's replies
        await nc.subscribe(s.task("action"))  # the task subject itself
        await _await_errors(errors, got, 3)
    finally:
        await nc.close()
    lines = stack.violations()
    assert any('"$JS.API.CONSUMER.INFO.SY_TASKS.action"' in line for line in lines)
    assert any('Subscription Violation - Subject "_INBOX.agent-action.>"' in line for line in lines)
    assert any(f'Subscription Violation - Subject "{s.task("action")}"' in line for line in lines)


async def test_the_console_works_the_queue_with_zero_violations(secured: Deployment) -> None:
    before = len(secured.stack.violations())
    sub = await secured.cli("submit", "--json", "--email", "ada@example.com",
                            "Please refund 250 EUR for the outage last week.")
    assert sub.code == 3, sub.stdout + sub.stderr
    held = json.loads(sub.stdout)
    listed = await secured.cli("review", "--json")
    assert held["escalation_id"] in [e["id"] for e in json.loads(listed.stdout)]
    approve = await secured.cli("review", "approve", held["escalation_id"])
    assert approve.code == 0, approve.stderr
    for args in (("status", "--json"), ("trace", held["workflow_id"]),
                 ("audit", "verify", held["workflow_id"])):
        res = await secured.cli(*args)
        assert res.code == 0, (args, res.stdout, res.stderr)
    assert secured.stack.violations()[before:] == []


async def test_nobody_can_purge_or_delete_the_audit_trail(secured: Deployment) -> None:
    s: Subjects = secured.settings.subjects
    events = s.stream("events")
    before = len(secured.stack.violations())
    for identity in (authz.CONSOLE, authz.SUPERVISOR, authz.ADMIN):
        nc = await _connect_as(secured.stack, identity, [], asyncio.Event())
        js = nc.jetstream(timeout=1.0)
        try:
            if identity == authz.ADMIN:  # allowed to ask; the stream itself says no
                with pytest.raises(APIError, match="stream purge not permitted"):
                    await js.purge_stream(events)
                with pytest.raises(APIError, match="message delete not permitted"):
                    await js.delete_msg(events, 1)
                continue
            with pytest.raises(TimeoutError):  # the server drops the request: no such right
                await js.purge_stream(events)
            with pytest.raises(TimeoutError):
                await js.delete_msg(events, 1)
        finally:
            await nc.close()
    lines = secured.stack.violations()[before:]
    for api in (f"$JS.API.STREAM.PURGE.{events}", f"$JS.API.STREAM.MSG.DELETE.{events}"):
        assert sum(f'Subject "{api}"' in line for line in lines) == 2  # console and supervisor


def _grant(signer: grants.Signer, **kw: Any) -> str:
    now = time.time()
    fields: dict[str, Any] = dict(id=f"g-{uuid.uuid4().hex[:8]}", workflow_id="wg", task_id="wg:a:1",
                                  role="action", tools=["propose_refund"], budget=1,
                                  issued_at=now, expires_at=now + 60, issuer="")
    return signer.mint(grants.Grant(**(fields | kw)))


async def test_bad_grants_are_refused_and_audited_under_the_generated_config(
    secured: Deployment,
) -> None:
    """As the action agent's own identity, on its own tool subject: forged, expired, other-role
    and replayed-beyond-budget grants. None is accepted; each refusal is audited with its code."""
    stack, s = secured.stack, secured.settings.subjects
    signer = grants.Signer(secured.settings.load_seed(create=False))  # the real supervisor's key
    store = SupportStore(secured.settings.data_dir / "support.db")
    refunds = len(store.refunds())
    before = len(stack.violations())
    nc = await nats.connect(stack.url, **stack.connect_options(authz.agent_identity("action")))
    budget_one = _grant(signer)
    cases = [
        ("grant_invalid", _grant(grants.Signer(grants.new_seed()))),  # forged: another key
        ("grant_expired", _grant(signer, expires_at=time.time() - 1)),
        ("grant_scope", _grant(signer, role="compliance")),  # a real grant of another role
        ("limit_exceeded", _grant(signer, limits={"propose_refund": {"amount": 10}})),
        (None, budget_one),  # the one call its budget allows (a small refund, under approval)
        ("budget_exhausted", budget_one),  # replayed beyond its budget, with a new call
    ]
    try:
        for n, (code, grant) in enumerate(cases):
            call = ToolCall(tool="propose_refund", grant=grant, task_id="wg:a:1", workflow_id="wg",
                            args={"customer_id": "C-1001", "amount": 50, "reason": "r"},
                            idempotency_key=f"wg:a:{n}")
            reply = decode((await nc.request(s.tool("propose_refund", "action"), encode(call),
                                              timeout=5)).data, ToolResult)
            assert (reply.error.code if reply.error else None) == code, (code, reply)
    finally:
        await nc.close()
    assert len(store.refunds()) == refunds + 1  # only the call within the budget ran
    store.close()
    client_nc = await nats.connect(stack.url, **stack.connect_options(authz.CONSOLE))
    try:
        client = SwitchyardClient(client_nc, s)
        entries = [e for r in await client.events("wg") for e in r.entries]
        # a grant no trusted key vouches for does not make the call's workflow known: those two
        # refusals are on the chain no workflow can claim, with the workflow they named
        vouched = [c for c, _ in cases if c and c not in ("grant_invalid", "grant_expired")]
        assert [e.data.get("code") for e in entries if e.type == "tool.refused"] == vouched
        stray = [e for r in await client.events(None) for e in r.entries if e.type == "tool.refused"
                 and e.data.get("claimed_workflow") == "wg"]
        assert [e.data.get("code") for e in stray] == ["grant_invalid", "grant_expired"]
        assert (await client.verify("wg")).ok and (await client.verify(None)).ok
    finally:
        await client_nc.close()
    assert stack.violations()[before:] == []  # all of it allowed by the bus; refused by the host


async def test_the_cli_without_a_key_is_refused_at_once_with_what_to_do(secured: Deployment) -> None:
    env = {k: v for k, v in secured.env.items() if k != "SWITCHYARD_NKEY_FILE"}
    res = await run_cli("status", env=env, timeout=30)  # not nats.py's minute of reconnects
    assert res.code == 2, res
    assert "refused this connection (no key)" in res.stderr and "Authorization Violation" in res.stderr
    assert "SWITCHYARD_NKEY_FILE" in res.stderr and "Traceback" not in res.stderr
    forged = secured.settings.data_dir / "stranger.nk"
    forged.write_bytes(grants.new_seed())  # a well-formed key the server does not know
    res = await run_cli("demo", "--connect", "--json", env={**env, "SWITCHYARD_NKEY_FILE": str(forged)},
                        timeout=30)
    assert res.code == 2 and "refused this connection (stranger)" in res.stderr, res


async def test_only_the_admin_provisions(secured: Deployment) -> None:
    res = await secured.cli("provision")  # as the console
    assert res.code == 2 and "console may not create streams" in res.stderr, res
    admin = {**secured.env, "SWITCHYARD_NKEY_FILE": str(secured.stack.creds.seed_file(authz.ADMIN))}
    res = await run_cli("provision", "--json", env=admin, timeout=60)
    assert res.code == 0, res.stderr[-2000:]
    found = {row["stream"]: row["replicas"] for row in json.loads(res.stdout)}
    assert {"SY_JOURNAL", "SY_TASKS", "KV_sy_workflows", "KV_sy_tool_ledger"} <= set(found)
    assert set(found.values()) == {1}


async def test_a_shadow_works_under_its_own_identity_and_the_bus_refuses_it_the_rest(
        secured: Deployment) -> None:
    """A shadow agent runs as ``shadow-action`` with zero violations; that identity may not write
    a journal record, a task or partial output, so what the runtime never sends the server
    refuses too."""
    stack, s = secured.stack, secured.settings.subjects
    before = len(stack.violations())
    env = {**secured.env, "SWITCHYARD_NKEY_FILE": str(stack.creds.seed_file(
        authz.shadow_identity("action")))}
    shadow = await asyncio.create_subprocess_exec(
        CLI, "agent", "run", "action", "--shadow", env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    nc = await nats.connect(stack.url, **stack.connect_options(authz.CONSOLE))
    try:
        client = SwitchyardClient(nc, s)
        deadline = time.monotonic() + 30
        while "action" not in json.loads((await nc.request(
                f"{s.prefix}.supervisor.status", b"", timeout=5)).data)["shadowed"]:
            assert time.monotonic() < deadline, "the supervisor never saw the shadow"
            await asyncio.sleep(0.1)
        wid = await client.submit("support", {"text": "Please refund 40 EUR for the duplicate "
                                              "charge.", "customer_email": "grace@example.com"})
        assert (await client.wait(wid, timeout=60)).status == "completed"
        from switchyard.evals.shadow import shadow_records

        deadline = time.monotonic() + 30
        while not [r for r in await shadow_records(client, "action") if r.workflow_id == wid]:
            assert time.monotonic() < deadline, "no shadow record"
            await asyncio.sleep(0.1)
    finally:
        shadow.terminate()
        await shadow.wait()
        await nc.close()
    assert stack.violations()[before:] == []  # all it did, it may
    errors: list[str] = []
    got = asyncio.Event()
    rogue = await _connect_as(stack, authz.shadow_identity("action"), errors, got)
    try:
        for subject in (s.result("w1", "action"), s.task("action"), s.partial("w1"),
                        s.submit("w1"), s.decision("w1")):
            await rogue.publish(subject, b"{}")
        await _await_errors(errors, got, 5)
    finally:
        await rogue.close()
    assert all("permissions violation for publish" in e.lower() for e in errors), errors
