"""The stack as deployed: supervisor, tool host and five agents as separate processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import DeliverPolicy

from switchyard.client import SwitchyardClient, replayed_id
from switchyard.protocol import Task, ToolCall, decode, encode, grants
from switchyard.protocol.headers import DLQ_CODE
from switchyard.tools.builtin import SupportStore

from .conftest import CLI, Deployment, free_port, readme_example, run_cli

pytestmark = pytest.mark.e2e


async def test_stack_runs_the_readme_agent_in_its_own_process(
    deployment: Deployment, tmp_path: Path
) -> None:
    (tmp_path / "summarize.py").write_text(readme_example("summarize.py"))
    (tmp_path / "summarize.yaml").write_text(readme_example("summarize.yaml"))
    assert len(readme_example("summarize.py").strip().splitlines()) <= 16
    put = await deployment.cli("workflow", "put", "summarize.yaml", cwd=tmp_path)
    assert put.code == 0, put.stderr
    agent = await asyncio.create_subprocess_exec(
        CLI, "agent", "run", "summarize:agent", cwd=tmp_path, env=deployment.env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        nc = await nats.connect(deployment.stack.url)
        client = SwitchyardClient(nc, deployment.settings.subjects)
        wid = await client.submit("summarize", {"text": "Printer on fire.\nPlease advise."})
        res = await client.wait(wid, timeout=30)  # the agent may still be starting
        await nc.close()
        assert res.status == "completed", res
        assert res.outcome is not None
        assert res.outcome.output == {"words": 5, "first_line": "Printer on fire."}
    finally:
        agent.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, err = await agent.communicate()
    assert agent.returncode == 0, err.decode()[-2000:]


async def test_stack_dead_letters_bad_tasks_and_every_process_keeps_running(
    deployment: Deployment,
) -> None:
    s = deployment.settings.subjects
    pids = {name: p.pid for name, p in deployment.stack.procs.items()}
    nc = await nats.connect(deployment.stack.url)
    js = nc.jetstream()
    now = time.time()
    forged = grants.Signer(grants.new_seed()).mint(grants.Grant(
        id="x:triage:1", workflow_id="x", task_id="x:triage:1", role="triage", tools=["kb_search"],
        budget=99, issued_at=now, expires_at=now + 60, issuer=""))
    genuine = Task(id="x:triage:1", workflow_id="x", workflow="support", step="triage",
                   role="triage", attempt=1, input={"text": "hi"}, grant=forged)
    bad = {
        "decode_error": b'{"protocol": "2.0", "id": "trunc',
        "unsupported_version": encode(genuine).replace(b'"2.0"', b'"9.0"'),
        "grant_invalid": encode(genuine),
    }
    dlq = await js.subscribe(s.dlq("task"), ordered_consumer=True,
                             deliver_policy=DeliverPolicy.NEW)
    for body in bad.values():
        await js.publish(s.task("triage"), body)
    seen: dict[str, bytes] = {}
    async with asyncio.timeout(20):
        while len(seen) < len(bad):
            msg = await dlq.next_msg(timeout=None)
            assert msg.headers is not None
            seen[msg.headers[DLQ_CODE]] = msg.data
    await dlq.unsubscribe()
    assert seen == bad  # each rejected with its reason, the bytes unchanged
    client = SwitchyardClient(nc, s)
    wid = await client.submit("support", {"text": "The app crashes every time I open it",
                                          "customer_email": "ada@example.com"})
    res = await client.wait(wid, timeout=30)
    await nc.close()
    assert res.status == "completed", res
    assert {n: p.pid for n, p in deployment.stack.procs.items()} == pids
    assert all(p.returncode is None for p in deployment.stack.procs.values())


async def test_stack_review_flow_from_the_command_line(deployment: Deployment) -> None:
    sub = await deployment.cli("submit", "--json", "--email", "katherine@example.com",
                               "Under GDPR I request a copy of all personal data you hold about me.")
    assert sub.code == 3, sub.stderr  # waiting for a person
    first = json.loads(sub.stdout)
    assert first["status"] == "escalated" and "legal" in first["reason"]
    listed = await deployment.cli("review", "--json")
    assert first["escalation_id"] in [e["id"] for e in json.loads(listed.stdout)]
    approve = await deployment.cli("review", "approve", first["escalation_id"], "--note", "ok")
    assert approve.code == 0, approve.stderr
    nc = await nats.connect(deployment.stack.url)
    res = await SwitchyardClient(nc, deployment.settings.subjects).wait(
        first["workflow_id"], timeout=30, stop_at_escalation=False)
    await nc.close()
    assert res.status == "completed" and res.outcome is not None
    assert res.outcome.output is not None and res.outcome.output["approved"] is True
    again = await deployment.cli("review", "approve", first["escalation_id"])
    assert again.code == 1 and "no open escalation" in again.stderr


async def test_stack_refund_above_the_threshold_waits_for_approval_then_runs_once(
    deployment: Deployment,
) -> None:
    sub = await deployment.cli("submit", "--json", "--email", "ada@example.com",
                               "Please refund 250 EUR for the outage last week.")
    assert sub.code == 3, sub.stderr
    held = json.loads(sub.stdout)
    assert "propose_refund call needs a person's approval" in held["reason"]
    listed = {e["id"]: e for e in json.loads((await deployment.cli("review", "--json")).stdout)}
    esc = listed[held["escalation_id"]]
    assert esc["kind"] == "approval"
    assert esc["output"]["approval"]["args"]["amount"] == 250  # the exact call, shown to a person
    store = SupportStore(deployment.settings.data_dir / "support.db")
    before = [r for r in store.refunds() if r["amount"] == 250]
    approve = await deployment.cli("review", "approve", held["escalation_id"])
    assert approve.code == 0, approve.stderr
    nc = await nats.connect(deployment.stack.url)
    res = await SwitchyardClient(nc, deployment.settings.subjects).wait(
        held["workflow_id"], timeout=30, stop_at_escalation=False)
    await nc.close()
    assert res.status == "completed", res
    assert res.outcome is not None and res.outcome.output is not None
    assert "refund of 250.00 EUR" in res.outcome.output["reply"]
    after = [r for r in store.refunds() if r["amount"] == 250]
    store.close()
    assert len(after) == len(before) + 1  # executed once, after the approval


async def test_stack_trace_shows_one_run_as_a_tree(deployment: Deployment) -> None:
    sub = await deployment.cli("submit", "--json", "--email", "ada@example.com",
                               "The app crashes every time I open it")
    assert sub.code == 0, sub.stderr
    wid = json.loads(sub.stdout)["workflow_id"]
    as_json = await deployment.cli("trace", wid, "--json")
    kinds = [e["type"] for record in json.loads(as_json.stdout) for e in record["entries"]]
    assert kinds[0] == "workflow.submitted" and kinds[-1] == "workflow.completed"
    assert kinds.count("step.dispatched") == 5 and kinds.count("step.ok") == 5
    assert "tool.called" in kinds  # retrieval and action called tools under their grants
    tree = await deployment.cli("trace", wid)
    assert tree.code == 0, tree.stderr
    for step in ("triage", "retrieval", "action", "compliance", "reviewer", "kb_search"):
        assert step in tree.stdout
    missing = await deployment.cli("trace", "no-such-run")
    assert missing.code == 1 and "no journal for workflow" in missing.stderr
    verified = await deployment.cli("audit", "verify", wid)
    assert verified.code == 0 and f"ok {wid}" in verified.stdout, verified.stdout
    none = await deployment.cli("audit", "verify", "no-such-run")
    assert none.code == 1 and "NOT FOUND" in none.stdout


async def test_stack_review_next_claims_from_the_human_queue(deployment: Deployment) -> None:
    sub = await deployment.cli("submit", "--json", "--email", "linus@example.org", "hello?")
    assert sub.code == 3, sub.stderr
    first = json.loads(sub.stdout)
    proc = await asyncio.create_subprocess_exec(
        CLI, "review", "next", env=deployment.env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):  # reject whatever is claimed until the queue is empty
        out, err = await proc.communicate(b"reject\n" * 20)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert first["escalation_id"] in out.decode() and "nothing is waiting" in out.decode()
    nc = await nats.connect(deployment.stack.url)
    res = await SwitchyardClient(nc, deployment.settings.subjects).wait(
        first["workflow_id"], timeout=30, stop_at_escalation=False)
    await nc.close()
    assert res.status == "rejected"


async def test_stack_status_lists_every_process(deployment: Deployment) -> None:
    res = await deployment.cli("status", "--json")
    assert res.code == 0, res.stderr
    data: dict[str, Any] = json.loads(res.stdout)
    names = {svc["name"] for svc in data["services"]}
    assert deployment.stack.expected_services <= names
    triage = next(s for s in data["services"] if s["name"].endswith("agent-triage"))
    assert triage["stats"]["endpoints"][0]["data"]["received"] >= 1
    assert data["workflows"].get("finished", 0) >= 1  # outcomes on the bus


async def test_submit_without_a_server_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    res = await run_cli("submit", "hello", env=env, cwd=tmp_path)
    assert res.code == 2 and "no NATS server answers" in res.stderr


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def _exited(pids: set[int], timeout: float) -> None:
    """Wait until every pid has exited (pidfds become readable on exit)."""
    loop = asyncio.get_running_loop()
    waits = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        done = asyncio.Event()
        loop.add_reader(fd, done.set)
        waits.append((fd, done))
    try:
        async with asyncio.timeout(timeout):
            for _, done in waits:
                await done.wait()
    finally:
        for fd, _ in waits:
            loop.remove_reader(fd)
            os.close(fd)


async def _start_up(tmp_path: Path) -> tuple[asyncio.subprocess.Process, Path, set[int]]:
    """``switchyard up`` on an embedded server; returns it, its data dir and its 9 children."""
    data = tmp_path / "up-data"
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{free_port()}",
           "SWITCHYARD_DATA_DIR": str(data), "SWITCHYARD_CONSOLE_PORT": str(free_port())}
    up = await asyncio.create_subprocess_exec(
        CLI, "up", env=env, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    assert up.stdout is not None
    try:
        async with asyncio.timeout(60):
            line = await up.stdout.readline()
        assert b"Switchyard is up" in line and b"embedded nats-server" in line, line
        children = set(_processes_with(str(data))) - {up.pid}
        assert len(children) == 9  # nats-server, supervisor, tool host, five agents, console
    except BaseException:
        up.kill()
        await up.wait()
        raise
    return up, data, children


async def test_up_killed_outright_leaves_no_process_behind(tmp_path: Path) -> None:
    up, data, children = await _start_up(tmp_path)
    up.kill()  # SIGKILL: it cannot pass anything on
    await up.wait()
    await _exited(children, timeout=30)  # they noticed, drained and left
    assert _processes_with(str(data)) == []


async def test_up_starts_embedded_nats_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    up, data, _ = await _start_up(tmp_path)
    try:
        up.send_signal(signal.SIGINT)
        async with asyncio.timeout(40):
            await up.wait()
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
    assert up.returncode == 0
    assert _processes_with(str(data)) == []

async def test_processes_serve_prometheus_metrics(
    nats_url: str, signer: grants.Signer, tmp_path: Path
) -> None:
    import httpx

    from switchyard.protocol import Subjects, ToolCall, ToolResult

    port, prefix = free_port(), f"m{os.getpid()}{free_port()}"
    env = {**os.environ, "NATS_URL": nats_url, "SWITCHYARD_PREFIX": prefix,
           "SWITCHYARD_DATA_DIR": str(tmp_path), "SWITCHYARD_METRICS_PORT": str(port),
           "SWITCHYARD_TRUSTED_KEYS": signer.public_key}
    host = await asyncio.create_subprocess_exec(
        CLI, "tools", "run", env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    nc = await nats.connect(nats_url)
    s = Subjects(prefix)
    try:
        async with asyncio.timeout(30):  # serving once $SRV.INFO lists the tool's endpoint
            while not any(ep["name"] == "kb_search"
                          for svc in await SwitchyardClient(nc, s).services(window=0.2)
                          for ep in svc.get("endpoints") or []):
                pass
        call = ToolCall(tool="kb_search", args={"query": "x"}, grant="", task_id="t",
                        workflow_id="w")
        reply = await nc.request(s.tool("kb_search", "retrieval"), encode(call), timeout=5)
        assert decode(reply.data, ToolResult).error.code == "grant_missing"  # type: ignore[union-attr]
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        assert 'switchyard_toolhost_calls_total{outcome="refused",tool="kb_search"} 1.0' in text
    finally:
        await nc.close()
        host.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await host.wait()


async def test_dlq_list_show_and_replay_once_the_cause_is_fixed(
    deployment: Deployment, tmp_path: Path,
) -> None:
    """A submission for a workflow nobody has put yet is dead-lettered; once the operator puts
    it, replaying the dead letter runs it."""
    wid = f"late-{uuid.uuid4().hex[:6]}"
    nc = await nats.connect(deployment.stack.url)
    try:
        await SwitchyardClient(nc, deployment.settings.subjects).submit(
            "triage_only", {"text": "My invoice is wrong"}, workflow_id=wid)
        failed = await SwitchyardClient(nc, deployment.settings.subjects).wait(wid, timeout=15)
    finally:
        await nc.close()
    assert failed.status == "failed" and "unknown workflow 'triage_only'" in failed.reason
    listed = json.loads((await deployment.cli("dlq", "list", "--kind", "submit", "--json")).stdout)
    [letter] = [d for d in listed if d["code"] == "invalid_input" and "triage_only" in d["reason"]]
    shown = json.loads((await deployment.cli("dlq", "show", str(letter["seq"]), "--json")).stdout)
    subjects = deployment.settings.subjects
    assert shown["body"]["id"] == wid and shown["subject"] == subjects.submit(wid)
    (tmp_path / "triage_only.yaml").write_text(
        "name: triage_only\nsteps:\n  - {name: t, role: triage, input: {text: input.text}}\n")
    put = await deployment.cli("workflow", "put", "triage_only.yaml", cwd=tmp_path)
    assert put.code == 0, put.stderr
    replay = await deployment.cli("dlq", "replay", str(letter["seq"]))
    assert replay.code == 0, replay.stderr
    again = replayed_id(wid, letter["seq"])  # a run's id begins its journal once: a new run
    nc = await nats.connect(deployment.stack.url)
    try:
        client = SwitchyardClient(nc, subjects)
        done = await client.wait(again, timeout=20)
        assert done.status == "completed" and done.outcome is not None  # this time it runs
        assert [s.step for s in done.outcome.steps] == ["t"]
        kinds = [e.type for r in await client.events(wid) for e in r.entries]
        assert "dlq.replayed" in kinds  # recorded beside the journal of the run it came from
        traced = await deployment.cli("audit", "verify", again)
        assert traced.code == 0, traced.stdout
        first = await client.outcome(wid)
        assert first is not None and first.status == "failed"  # the first run stays as it was
    finally:
        await nc.close()
    nc = await nats.connect(deployment.stack.url)
    try:  # a tool call without a grant: refused and dead-lettered, and not replayable
        call = ToolCall(tool="kb_search", args={"query": "x"}, grant="", task_id="t", workflow_id="w")
        await nc.request(deployment.settings.subjects.tool("kb_search", "retrieval"), encode(call),
                         timeout=5)
    finally:
        await nc.close()
    tools = json.loads((await deployment.cli("dlq", "list", "--kind", "tool", "--json")).stdout)
    refused = await deployment.cli("dlq", "replay", str(tools[-1]["seq"]))
    assert refused.code == 1 and "only stream messages can be replayed" in " ".join(refused.stderr.split())
