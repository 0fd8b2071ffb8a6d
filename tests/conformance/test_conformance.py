"""Conformance of docs/protocol.md: a plain nats-py agent (agent.py, no Switchyard import) written
from the document alone, run against the real supervisor, each in its own process."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, DeliverPolicy

from switchyard.client import SwitchyardClient
from switchyard.protocol import Subjects, grants
from switchyard.settings import Settings

pytestmark = pytest.mark.e2e

AGENT = Path(__file__).with_name("agent.py")
CLI = str(Path(sys.executable).parent / "switchyard")
WORKFLOW = "name: echo\nsteps:\n  - {name: echo, role: echo, threshold: 0.5}\n"


@dataclass
class Stack:
    prefix: str
    env: dict[str, str]
    data: Path
    logs: Path
    nc: Client
    supervisor: asyncio.subprocess.Process
    agent: asyncio.subprocess.Process

    @property
    def client(self) -> SwitchyardClient:
        return SwitchyardClient(self.nc, Subjects(self.prefix))

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    async def cli(self, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            CLI, *args, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def run_echo(self, text: str) -> str:
        wid = await self.client.submit("echo", {"text": text})
        res = await self.client.wait(wid, timeout=30)
        assert res.status == "completed", (res, self.log("agent"), self.log("supervisor"))
        assert res.outcome is not None and res.outcome.output == {"echo": text}
        return wid


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(15):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _serving(client: SwitchyardClient, name: str, proc: asyncio.subprocess.Process,
                   log: Path) -> None:
    """Until ``$SRV.INFO`` lists service ``name`` (bounded; fails at once if the process died)."""
    async with asyncio.timeout(45):
        while name not in {s["name"] for s in await client.services(window=0.2)}:
            assert proc.returncode is None, f"{name} exited {proc.returncode}:\n{log.read_text()[-3000:]}"


@pytest.fixture
async def stack(nats_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """The real supervisor (``python -m switchyard supervisor run``), then agent.py, each its own
    process, on the session's nats-server under a prefix of their own."""
    prefix, data, logs = f"c{uuid.uuid4().hex[:10]}", tmp_path / "data", tmp_path / "logs"
    (tmp_path / "echo.yaml").write_text(WORKFLOW)
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env |= {"NATS_URL": nats_url, "SWITCHYARD_PREFIX": prefix, "SWITCHYARD_DATA_DIR": str(data),
            "SWITCHYARD_WORKFLOWS": str(tmp_path / "echo.yaml"), "SWITCHYARD_POLICY": "none"}
    procs: list[asyncio.subprocess.Process] = []
    files = []
    nc = await nats.connect(nats_url)
    client = SwitchyardClient(nc, Subjects(prefix))

    async def start(name: str, service: str, *argv: str) -> asyncio.subprocess.Process:
        files.append(log := open(logs / f"{name}.log", "wb"))
        procs.append(proc := await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log))
        await _serving(client, service, proc, logs / f"{name}.log")
        return proc

    try:
        supervisor = await start("supervisor", f"{prefix}-supervisor",
                                 sys.executable, "-m", "switchyard", "supervisor", "run")
        agent = await start("agent", f"{prefix}-agent-echo", sys.executable, str(AGENT), nats_url, prefix)
        yield Stack(prefix, env, data, logs, nc, supervisor, agent)
    finally:
        for proc in reversed(procs):  # terminate, then kill
            await _stop(proc)
        for f in files:
            f.close()
        await nc.close()


def _task(wid: str, grant: str, *, attempt: int = 1, text: Any = "hi", **extra: Any) -> dict[str, Any]:
    return {"protocol": "2.0", "id": f"{wid}:echo:{attempt}", "workflow_id": wid, "workflow": "echo",
            "step": "echo", "role": "echo", "attempt": attempt,
            "input": {} if text is None else {"text": text}, "context": {}, "grant": grant,
            "deadline": 0, **extra}


def _grant(signer: grants.Signer, wid: str, *, attempt: int = 1, **kw: Any) -> str:
    now, tid = time.time(), f"{wid}:echo:{attempt}"
    fields: dict[str, Any] = dict(id=tid, workflow_id=wid, task_id=tid, role="echo", tools=[], budget=0,
                                  issued_at=now, expires_at=now + 60, issuer="")
    return signer.mint(grants.Grant(**(fields | kw)))


async def test_conformance_consumer_and_discovery_follow_the_document(stack: Stack) -> None:
    js = stack.nc.jetstream()
    info = await js.consumer_info(f"{stack.prefix.upper()}_TASKS", "echo")
    c = info.config
    assert (c.durable_name, c.filter_subject, c.ack_policy) == ("echo", f"{stack.prefix}.task.echo",
                                                                 AckPolicy.EXPLICIT)
    assert (c.ack_wait, c.max_deliver, c.max_ack_pending) == (30.0, 5, 1000)
    svc = next(s for s in await stack.client.services(window=0.3)
               if s["name"] == f"{stack.prefix}-agent-echo")
    assert svc["metadata"]["kind"] == "agent" and svc["metadata"]["role"] == "echo"
    reply = await stack.nc.request(f"{stack.prefix}.agent.echo.schema", b"", timeout=5)
    assert json.loads(reply.data)["role"] == "echo"
    code, out, err = await stack.cli("status", "--json")
    assert code == 0, err
    assert f"{stack.prefix}-agent-echo" in {s["name"] for s in json.loads(out)["services"]}


async def test_conformance_echo_workflow_completes_with_a_documented_result(stack: Stack) -> None:
    p = stack.prefix
    tasks = await stack.nc.subscribe(f"{p}.task.echo")  # core NATS sees what JetStream stores
    wid = await stack.run_echo("hello")
    task_msg = await tasks.next_msg(timeout=5)
    await tasks.unsubscribe()
    task = json.loads(task_msg.data)
    assert task_msg.headers and task_msg.headers["Nats-Msg-Id"] == task["id"] == f"{wid}:echo:1"
    result = await stack.nc.jetstream().get_last_msg(f"{p.upper()}_JOURNAL",
                                                     f"{p}.journal.{wid}.result.echo")
    body = json.loads(result.data)
    # on the journal right after the record its task names (the submission: seq and digest)
    submitted = await stack.nc.jetstream().get_last_msg(f"{p.upper()}_JOURNAL",
                                                        f"{p}.journal.{wid}.submit")
    assert (task["after"], task["prev"]) == (submitted.seq,
                                             hashlib.sha256(submitted.data).hexdigest())
    assert (body["after"], body["prev"]) == (task["after"], task["prev"])
    assert result.headers["Nats-Expected-Last-Subject-Sequence"] == str(task["after"])
    assert result.headers and result.headers["Nats-Msg-Id"] == f"{task['id']}:result"
    assert result.headers["Sy-Protocol"] == task_msg.headers["Sy-Protocol"] == "2.0"
    assert result.headers["traceparent"] == task_msg.headers["traceparent"]
    body_part = task["grant"].split(".", 1)[0]
    grant = json.loads(base64.urlsafe_b64decode(body_part + "=" * (-len(body_part) % 4)))
    assert (grant["task_id"], grant["workflow_id"], grant["role"]) == (task["id"], wid, "echo")
    assert grant["expires_at"] == pytest.approx(task["deadline"] + 30)  # the task's deadline + 30 s
    assert (body["task_id"], body["status"], body["confidence"], body["output"]) == (
        task["id"], "ok", 0.9, {"echo": "hello"})
    code, out, err = await stack.cli("audit", "verify", wid)
    assert code == 0 and f"ok {wid}" in out, (out, err)


async def test_conformance_bad_tasks_are_dead_lettered_and_the_agent_keeps_working(stack: Stack) -> None:
    p, js = stack.prefix, stack.nc.jetstream()
    done = await stack.run_echo("first")  # a finished workflow, for a valid grant with a bad input
    signer = grants.Signer(Settings(prefix=p, data_dir=stack.data).load_seed(create=False))
    forged = grants.Signer(grants.new_seed())

    def enc(task: dict[str, Any]) -> bytes:
        return json.dumps(task).encode()

    bad: dict[str, tuple[bytes, str | None]] = {  # code: (bytes, the chain its record goes on)
        "decode_error": (b'{"protocol": "2.0", "id": "trunc', None),
        "unsupported_version": (enc(_task("x1", _grant(signer, "x1"), protocol="9.\u00e9")), None),
        "grant_missing": (enc(_task("x2", "")), None),
        "grant_invalid": (enc(_task("x3", _grant(forged, "x3"))), None),  # signed by another key
        "grant_expired": (enc(_task("x4", _grant(signer, "x4", expires_at=time.time() - 1))), None),
        "grant_scope": (enc(_task("x5", _grant(signer, "x5", role="triage"))), None),
        "invalid_input": (enc(_task(done, _grant(signer, done, attempt=2), attempt=2, text=None)), done),
    }
    dlq = await js.subscribe(f"{p}.dlq.task", ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
    sent: dict[int, str] = {}
    for code, (body, _) in bad.items():
        ack = await js.publish(f"{p}.task.echo", body, headers={"Nats-Msg-Id": f"bad-{code}"})
        sent[ack.seq] = code
    letters: dict[str, Any] = {}
    async with asyncio.timeout(20):
        while len(letters) < len(bad):
            msg = await dlq.next_msg(timeout=None)
            assert msg.headers is not None
            letters[msg.headers["Sy-Dlq-Code"]] = msg
    await dlq.unsubscribe()
    assert set(letters) == set(bad), stack.log("agent")
    for code, msg in letters.items():
        h, seq = msg.headers, next(s for s, c in sent.items() if c == code)
        assert msg.data == bad[code][0]  # the original bytes, unchanged
        assert h["Sy-Dlq-Source"] == "agent:echo" and h["Sy-Dlq-Subject"] == f"{p}.task.echo"
        assert h["Sy-Dlq-Stream-Seq"] == str(seq) and h["Sy-Dlq-Deliveries"] == "1"
        assert h["Nats-Msg-Id"] == f"dlq:task:{seq}" and h["Sy-Dlq-Reason"].isascii()
        assert h["Sy-Dlq-Reason"]

    async def chain(subject: str, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        """The chain's records, from its first, read until ``until`` holds of them (bounded)."""
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        records: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(20):
                while not until(records):
                    records.append(json.loads((await sub.next_msg(timeout=None)).data))
        finally:
            await sub.unsubscribe()
        return records

    def agent_entries(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        return {e["data"]["stream_seq"]: e for r in records if r["source"] == "agent:echo"
                for e in r["entries"]}

    unattributed = {s for s, c in sent.items() if bad[c][1] is None}
    records = await chain(f"{p}.audit.unattributed", lambda rs: unattributed <= set(agent_entries(rs)))
    for r in records:
        assert r["workflow_id"] == "" and r["n"] == 0 and len(r["entries"]) == 1
    for seq, entry in agent_entries(records).items():
        assert entry["type"] == "task.dead_lettered" and entry["data"]["code"] == sent[seq]
        claimed = json.loads(bad[sent[seq]][0])["workflow_id"] if sent[seq] != "decode_error" else None
        assert entry["data"].get("claimed_workflow") == claimed  # absent when it named none
        header = letters[sent[seq]].headers["Sy-Dlq-Reason"]  # escaped; the record's is not
        assert json.loads(f'"{header}"') == entry["data"]["reason"][:1000]
    assert "\\u00e9" in letters["unsupported_version"].headers["Sy-Dlq-Reason"]

    on_workflow = await chain(f"{p}.event.{done}", lambda rs: bool(agent_entries(rs)))
    assert [e["data"]["code"] for e in agent_entries(on_workflow).values()] == ["invalid_input"]
    # its error Result went on the finished workflow's journal, for an attempt nobody awaits
    results = await chain(f"{p}.journal.{done}.result.echo",
                          lambda rs: any(r["attempt"] == 2 for r in rs))
    assert results[-1]["error"]["code"] == "invalid_input"
    code, out, err = await stack.cli("audit", "verify", "--unattributed")
    assert code == 0, (out, err)

    assert stack.agent.returncode is None, stack.log("agent")
    again = await stack.run_echo("still here")
    code, out, err = await stack.cli("audit", "verify", again)
    assert code == 0 and f"ok {again}" in out, (out, err)
    # the test signed a task the supervisor never sent: the replay names it
    code, out, err = await stack.cli("audit", "verify", done)
    assert code == 1 and f"task {done}:echo:2, which the replay never sent" in out, (out, err)


async def test_conformance_agent_exits_cleanly_on_sigterm(stack: Stack) -> None:
    await stack.run_echo("bye")
    stack.agent.send_signal(signal.SIGTERM)
    async with asyncio.timeout(15):
        await stack.agent.wait()
    assert stack.agent.returncode == 0, stack.log("agent")
