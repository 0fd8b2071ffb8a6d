"""An agent for role ``echo`` in plain nats-py, written from docs/protocol.md alone (no Switchyard).

    python tests/conformance/agent.py <nats_url> [<prefix>]

Answers every good task with ``{"echo": <input.text>}`` at confidence 0.9; dead-letters a task that
does not decode or whose grant does not verify or fit it; exits 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import signal
import socket
import sys
import time
from typing import Any

import nats
import nats.errors
import nats.micro
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import APIError, NotFoundError

ROLE = "echo"
MAX_BYTES, MAX_TOKEN, MAX_ENCLOSED = 262_144, 8_192, 32
ACK_WAIT = float(os.environ.get("SWITCHYARD_ACK_WAIT", "30"))
MAX_DELIVER = int(os.environ.get("SWITCHYARD_MAX_DELIVER", "5"))
CONCURRENCY = 8
NKEY_PREFIXES = {0, 16, 104, 112, 160}
WRONG_LAST_SEQUENCE = 10071
INPUT_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
OUTPUT_SCHEMA = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}
GRANT_FIELDS = {"id": str, "workflow_id": str, "task_id": str, "role": str, "tools": list,
                "budget": int, "issued_at": (int, float), "expires_at": (int, float), "issuer": str}
TASK_FIELDS = {"id": str, "workflow_id": str, "step": str, "attempt": int, "input": dict}


class Refused(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def enclosure_ok(value: Any, enclosed: int = 0) -> bool:
    """No value may be enclosed by more than 32 objects and arrays (the message itself counted)."""
    if enclosed > MAX_ENCLOSED:
        return False
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return all(enclosure_ok(child, enclosed + 1) for child in children)


def decode_task(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_BYTES:
        raise Refused("message_too_large", f"message is {len(data)} bytes, over {MAX_BYTES}")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise Refused("decode_error", f"task is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise Refused("decode_error", "task is not a JSON object")
    version = doc.get("protocol", "2.0")
    if not isinstance(version, str):
        raise Refused("decode_error", "protocol is not a string")
    if version.split(".", 1)[0] != "2":
        raise Refused("unsupported_version", f"protocol version {version!r} is not 2.x")
    if not enclosure_ok(doc):
        raise Refused("decode_error", "payload nested deeper than 32 levels")
    for name, kind in TASK_FIELDS.items():
        if not isinstance(doc.get(name), kind) or isinstance(doc.get(name), bool):
            raise Refused("decode_error", f"task field {name!r} is missing or not a {kind.__name__}")
    if not isinstance(doc.get("grant", ""), str) or not isinstance(doc.get("deadline", 0), (int, float)):
        raise Refused("decode_error", "task field 'grant' or 'deadline' has the wrong type")
    return doc


def claimed_workflow(data: bytes) -> str:
    """The workflow id an unvouched input names, if any ("" when it names none)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return ""
    claimed = doc.get("workflow_id") if isinstance(doc, dict) else None
    return claimed if isinstance(claimed, str) else ""


def crc16(data: bytes) -> int:  # CRC-16/XMODEM
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def public_key_bytes(key: str) -> bytes:
    try:
        raw = base64.b32decode(key) if len(key) == 56 else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 35 or raw[0] not in NKEY_PREFIXES or crc16(raw[:33]) != int.from_bytes(raw[33:], "little"):
        raise Refused("grant_invalid", f"issuer {key[:60]!r} is not an nkey public key")
    return raw[1:33]


def b64url(part: str) -> bytes:
    return base64.b64decode(part + "=" * (-len(part) % 4), altchars=b"-_", validate=True)


def verify_grant(task: dict[str, Any], trusted: set[str]) -> dict[str, Any]:
    token = task.get("grant", "")
    if not token:
        raise Refused("grant_missing", "task carries no grant")
    if len(token) > MAX_TOKEN:
        raise Refused("grant_invalid", f"grant token is longer than {MAX_TOKEN} characters")
    try:
        body_part, _, sig_part = token.partition(".")
        body_bytes, signature = b64url(body_part), b64url(sig_part)
        body = json.loads(body_bytes)
        if not isinstance(body, dict) or not all(
                isinstance(body.get(k), t) and not isinstance(body.get(k), bool)
                for k, t in GRANT_FIELDS.items()):
            raise ValueError("grant body does not fit")
    except (ValueError, RecursionError):
        raise Refused("grant_invalid", "token is malformed") from None
    if body["issuer"] not in trusted:
        raise Refused("grant_invalid", f"grant issuer {body['issuer'][:60]!r} is not trusted")
    try:
        VerifyKey(public_key_bytes(body["issuer"])).verify(body_bytes, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise Refused("grant_invalid", "grant signature does not verify") from None
    if time.time() >= body["expires_at"]:
        raise Refused("grant_expired", f"grant expired at {body['expires_at']}")
    for field, want in (("task_id", task["id"]), ("workflow_id", task["workflow_id"]), ("role", ROLE)):
        if body[field] != want:
            raise Refused("grant_scope", f"grant {field} {body[field]!r} is not {want!r}")
    return body


class EchoAgent:
    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.p = url, prefix
        self.tasks_stream, self.events_stream = f"{prefix.upper()}_TASKS", f"{prefix.upper()}_EVENTS"
        self.journal_stream = f"{prefix.upper()}_JOURNAL"
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.stop = asyncio.Event()
        self.stats = {"received": 0, "ok": 0, "needs_human": 0, "errors": 0, "retried": 0,
                      "dead_lettered": 0, "in_flight": 0}

    async def trusted_keys(self) -> set[str]:
        if os.environ.get("SWITCHYARD_TRUSTED_KEYS"):
            return {k for k in os.environ["SWITCHYARD_TRUSTED_KEYS"].split(",") if k}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                entry = await (await self.js.key_value(f"{self.p}_trust")).get("supervisor")
                if keys := {k for k in (entry.value or b"").decode().split(",") if k}:
                    return keys
            except NotFoundError:
                pass
            await asyncio.sleep(0.2)
        raise SystemExit(f"no trusted key in KV {self.p}_trust, key supervisor; not starting")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        self.nc = await nats.connect(self.url, name=f"{self.p}-agent-{ROLE}")
        self.js = self.nc.jetstream()
        try:
            self.trusted = await self.trusted_keys()
            await self.js.add_consumer(self.tasks_stream, ConsumerConfig(
                durable_name=ROLE, filter_subject=f"{self.p}.task.{ROLE}",
                ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT, max_deliver=MAX_DELIVER,
                max_ack_pending=max(1000, 4 * CONCURRENCY)))
            sub = await self.js.pull_subscribe_bind(durable=ROLE, stream=self.tasks_stream)
            service = await self.register()
            while not self.stop.is_set():
                try:
                    msgs = await sub.fetch(CONCURRENCY, timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):  # nats.py raises either
                    continue
                for failed in await asyncio.gather(*(self.handle(m) for m in msgs), return_exceptions=True):
                    if failed:  # e.g. an ack lost with the connection: the task will come back
                        print(f"task handling failed: {failed!r}", file=sys.stderr)
            await service.stop()
            await sub.unsubscribe()  # nats-py's drain waits for ever on a pull subscription
        finally:
            await self.nc.drain()

    async def register(self) -> Any:
        service = await nats.micro.add_service(
            self.nc, name=f"{self.p}-agent-{ROLE}", version="0.1.0",
            description=f"Switchyard agent for role {ROLE}",
            metadata={"kind": "agent", "role": ROLE, "instance": self.name, "concurrency": str(CONCURRENCY)},
            stats_handler=lambda _endpoint: {"role": ROLE, **self.stats, "breakers": {}})

        async def schema(req: Any) -> None:
            answer = {"role": ROLE, "input": INPUT_SCHEMA, "output": OUTPUT_SCHEMA}
            await req.respond(json.dumps(answer).encode())

        await service.add_endpoint(name="schema", subject=f"{self.p}.agent.{ROLE}.schema", handler=schema,
                                   metadata={"role": ROLE, "input_schema": json.dumps(INPUT_SCHEMA),
                                             "output_schema": json.dumps(OUTPUT_SCHEMA)})
        return service

    async def handle(self, msg: Any) -> None:
        if self.stop.is_set():
            await msg.nak()  # shutting down with the task unfinished
            return
        self.stats["received"] += 1
        self.stats["in_flight"] += 1
        started = time.monotonic()
        heartbeat = asyncio.create_task(self.heartbeat(msg))
        try:
            try:
                task = decode_task(msg.data)
                verify_grant(task, self.trusted)
            except Refused as refused:  # its claim to a workflow is not vouched for
                await self.dead_letter(msg, refused, None)
                return
            try:
                await self.work(msg, task, started)
            except Exception as e:  # a crash: answer internal, then ack
                print(f"task {task['id']} crashed: {e!r}", file=sys.stderr)
                error = {"code": "internal", "message": repr(e)[:500], "retryable": True}
                if await self.answer(msg, task, started, "error", error=error, reason=error["message"]):
                    await msg.ack()
        finally:
            heartbeat.cancel()
            self.stats["in_flight"] -= 1

    async def work(self, msg: Any, task: dict[str, Any], started: float) -> None:
        text = task["input"].get("text")
        if not isinstance(text, str):  # the grant is valid: answer, then dead-letter on its chain
            refused = Refused("invalid_input", "input.text is missing or not a string")
            error = {"code": refused.code, "message": refused.reason, "retryable": False}
            if await self.answer(msg, task, started, "error", error=error, reason=refused.reason):
                await self.dead_letter(msg, refused, task["workflow_id"])
            return
        if task.get("deadline") and time.time() >= task["deadline"]:
            error = {"code": "timeout", "message": "past the task's deadline", "retryable": True}
            if await self.answer(msg, task, started, "error", error=error, reason=error["message"]):
                await msg.ack()
            return
        if await self.answer(msg, task, started, "ok", output={"echo": text}, confidence=0.9):
            await msg.ack()

    async def heartbeat(self, msg: Any) -> None:
        while True:
            await asyncio.sleep(ACK_WAIT / 3)
            await msg.in_progress()

    async def answer(self, msg: Any, task: dict[str, Any], started: float, status: str, *,
                     output: dict[str, Any] | None = None, confidence: float = 1.0,
                     error: dict[str, Any] | None = None, reason: str = "") -> bool:
        """Append the Result to the workflow's journal after the record the task names (after
        the journal's last record if something came first); on failure keep the task (nak)."""
        result = {"protocol": "2.0", "task_id": task["id"], "workflow_id": task["workflow_id"],
                  "step": task["step"], "role": ROLE, "attempt": task["attempt"], "status": status,
                  "output": output, "confidence": confidence, "reason": reason, "error": error,
                  "agent": self.name,
                  "usage": {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "model": ""},
                  "duration_ms": (time.monotonic() - started) * 1000}
        journal = f"{self.p}.journal.{task['workflow_id']}"
        headers = {"Nats-Msg-Id": f"{task['id']}:result", "Sy-Protocol": "2.0",
                   "Nats-Expected-Last-Subject-Sequence-Subject": f"{journal}.>"}
        if traceparent := (msg.headers or {}).get("traceparent"):
            headers["traceparent"] = traceparent
        after, prev = task.get("after", 0), task.get("prev", "")
        try:
            for _ in range(25):
                body = json.dumps({**result, "after": after, "prev": prev}).encode()
                try:
                    await self.js.publish(f"{journal}.result.{ROLE}", body, headers={
                        **headers, "Nats-Expected-Last-Subject-Sequence": str(after)})
                    break
                except APIError as e:
                    if e.err_code != WRONG_LAST_SEQUENCE:
                        raise
                # from the stream's leader, as docs/protocol.md says (a direct get may lag at R3)
                last = await self.js.get_msg(self.journal_stream, subject=f"{journal}.>")
                after, prev = last.seq, hashlib.sha256(last.data or b"").hexdigest()
            else:
                raise RuntimeError("25 appends overtaken in a row")
        except Exception:
            await msg.nak(delay=1)
            return False
        self.stats["ok" if status == "ok" else "errors"] += 1
        return True

    async def dead_letter(self, msg: Any, refused: Refused, workflow_id: str | None) -> None:
        """Copy to sy.dlq.task, audit it (on the unattributed chain unless a valid grant vouches for
        the workflow), then term; if the copy or the record fails, nak (1 s) and try again later."""
        seq, msg_id = msg.metadata.sequence.stream, f"dlq:task:{msg.metadata.sequence.stream}"
        headers = {"Sy-Dlq-Reason": json.dumps(refused.reason[:1000])[1:-1], "Sy-Dlq-Code": refused.code,
                   "Sy-Dlq-Subject": json.dumps(msg.subject)[1:-1], "Sy-Dlq-Source": f"agent:{ROLE}",
                   "Sy-Dlq-Stream-Seq": str(seq), "Sy-Dlq-Deliveries": str(msg.metadata.num_delivered),
                   "Nats-Msg-Id": msg_id}
        data: dict[str, Any] = {"code": refused.code, "reason": refused.reason, "stream_seq": seq,
                                "subject": msg.subject}
        if workflow_id is None and (claimed := claimed_workflow(msg.data)):
            data["claimed_workflow"] = claimed[:200]
        entry = {"type": "task.dead_lettered", "step": "", "data": data}
        chain = f"{self.p}.event.{workflow_id}" if workflow_id else f"{self.p}.audit.unattributed"
        try:
            await self.js.publish(f"{self.p}.dlq.task", msg.data, headers=headers)
            await self.append(chain, workflow_id or "", entry, msg_id)
        except Exception as e:
            print(f"dead letter of task {seq} failed, retrying: {e!r}", file=sys.stderr)
            await msg.nak(delay=1)
            return
        self.stats["dead_lettered"] += 1
        await msg.term()

    async def append(self, subject: str, workflow_id: str, entry: dict[str, Any], msg_id: str) -> None:
        at = time.time()
        for _ in range(25):
            try:
                last = await self.js.get_last_msg(self.events_stream, subject)
                tail_seq, prev = last.seq or 0, hashlib.sha256(last.data or b"").hexdigest()
            except NotFoundError:
                tail_seq, prev = 0, ""
            record = {"protocol": "2.0", "workflow_id": workflow_id, "at": at, "source": f"agent:{ROLE}",
                      "entries": [entry], "n": 0, "prev": prev}
            try:
                await self.js.publish(subject, json.dumps(record).encode(), headers={
                    "Nats-Expected-Last-Subject-Sequence": str(tail_seq), "Nats-Msg-Id": msg_id})
                return
            except APIError as e:
                if e.err_code != WRONG_LAST_SEQUENCE:
                    raise
        raise RuntimeError(f"gave up appending to {subject} after 25 conflicts")


if __name__ == "__main__":
    asyncio.run(EchoAgent(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "sy").run())
