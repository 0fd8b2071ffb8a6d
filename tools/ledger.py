"""ToolLedger: the idempotency ledger of side-effecting tool calls, and the used call budget of
every grant, in KV bucket ``<prefix>_tool_ledger`` (shared by all tool hosts, kept across
restarts).

Before a side-effecting call runs, the host creates the key's entry (``started``; a create, so two
hosts racing on one key cannot both win); after it, it records the result (``done``). A call whose
key is ``done`` gets the recorded result back and nothing runs again, however often the task is
redelivered. A key left ``started`` means an earlier call began and its outcome was never recorded
(a crash between the effect and the record): a tool declared ``idempotent`` (it makes its effect
at most once per key itself) is simply run again; any other is refused with ``outcome_unknown``,
for a person to settle, rather than risk doing it twice.

The bucket is replicated on a cluster, and while its leader is being elected (a node died) its
reads and writes fail with "no response" or a timeout for a few seconds: every operation rides
that out for up to ``wait`` seconds. A claim carries a token of its own, so a claim whose create
was stored but whose ack was lost is known again as this call's, not taken for an earlier call's
(which would refuse the call as ``outcome_unknown``). A budget count whose ack was lost may be
counted twice: the budget errs on the side of fewer calls.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import (
    BadRequestError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from switchyard.protocol.bus.provision import WRONG_LAST_SEQUENCE, kv_write
from switchyard.protocol.bus.transient import ride_out
from switchyard.protocol.messages import ToolResult

T = TypeVar("T")


class LedgerEntry(msgspec.Struct, kw_only=True):
    state: Literal["started", "done"]
    tool: str
    key: str
    started_at: float
    finished_at: float = 0.0
    result: ToolResult | None = None
    claim: str = ""  # the token of the call that claimed the key (recognises a lost ack)


_decoder = msgspec.json.Decoder(LedgerEntry)


def ledger_key(tool: str, key: str) -> str:
    return hashlib.sha256(f"{tool}\x00{key}".encode()).hexdigest()[:40]


class ToolLedger:
    """``retention_s``: how long a recorded call (and a grant's spent budget) is kept; a task
    redelivered later than that could run its calls again, so keep it well above ack waits,
    retries and human deadlines (default 7 days). ``wait``: how long each operation rides out a
    bucket without a leader before its error is raised."""

    def __init__(self, kv: KeyValue, js: JetStreamContext, bucket: str, *,
                 retention_s: float = 7 * 24 * 3600.0, wait: float = 8.0) -> None:
        self.kv = kv
        self._js, self._bucket, self.retention_s = js, bucket, retention_s
        self.wait = wait

    async def _led(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        return await ride_out(op, within=self.wait, what=f"tool ledger {what}")

    async def begin(self, tool: str, key: str) -> LedgerEntry | None:
        """Claim ``key`` for a first run (returns None), or return the entry already there."""
        claim = secrets.token_hex(8)
        entry = LedgerEntry(state="started", tool=tool, key=key, started_at=time.time(),
                            claim=claim)
        data = msgspec.json.encode(entry)
        try:
            await self._led(lambda: self.kv.create(ledger_key(tool, key), data,
                                                   msg_ttl=self.retention_s), "claim")
            return None
        except KeyWrongLastSequenceError:
            found = await self.get(tool, key)
            if found is not None and found.state == "started" and found.claim == claim:
                return None  # ours: an attempt stored it and its ack was lost
            return found

    async def get(self, tool: str, key: str) -> LedgerEntry | None:
        try:
            found = await self._led(lambda: self.kv.get(ledger_key(tool, key)), "read")
        except KeyNotFoundError:
            return None
        return _decoder.decode(found.value) if found.value else None

    async def finish(self, tool: str, key: str, result: ToolResult, started_at: float) -> None:
        entry = LedgerEntry(state="done", tool=tool, key=key, started_at=started_at,
                            finished_at=time.time(), result=result)
        data = msgspec.json.encode(entry)
        await self._led(lambda: kv_write(self._js, self._bucket, ledger_key(tool, key), data,
                                         ttl=self.retention_s), "record")  # an overwrite

    async def spend(self, grant_id: str, budget: int) -> bool:
        """Count one call against a grant's budget, shared by every host (compare-and-set);
        False when the budget is used up."""
        key = "budget." + hashlib.sha256(grant_id.encode()).hexdigest()[:40]
        for _ in range(50):
            try:
                entry = await self._led(lambda: self.kv.get(key), "budget read")
                used, revision = int(entry.value or b"0"), entry.revision or 0
            except KeyDeletedError as exc:
                used, revision = 0, (exc.entry.revision if exc.entry is not None else 0) or 0
            except KeyNotFoundError:
                used, revision = 0, 0
            if used >= budget:
                return False
            write = functools.partial(kv_write, self._js, self._bucket, key,
                                      str(used + 1).encode(), last=revision, ttl=self.retention_s)
            try:
                await self._led(write, "budget")
                return True
            except BadRequestError as exc:
                if exc.err_code not in WRONG_LAST_SEQUENCE:
                    raise
                continue  # another host counted a call in between: read again
        raise RuntimeError(f"budget of grant {grant_id} is too contended to count")

    async def release(self, tool: str, key: str) -> None:
        """Forget a claim whose call failed without an effect, so a retry may run."""
        try:
            await self._led(lambda: self.kv.purge(ledger_key(tool, key)), "release")
        except KeyNotFoundError:
            pass
