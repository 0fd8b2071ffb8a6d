"""What the console knows of the bus, kept live: the escalations waiting (the shared index), who
claimed which (a bucket of its own, so every console replica sees the same claims), and the runs
submitted and finished (the journal's submissions and the outcomes, read from their start).

Every change wakes the pages' event streams. The connection reconnects for ever; while it is
down the pages say so, and on its return the watches start again from the start."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgspec
import nats
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import InvalidKeyError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from switchyard.client import SwitchyardClient
from switchyard.protocol import Escalation, Outcome, WorkflowRequest, codec
from switchyard.protocol.bus.component import servers
from switchyard.protocol.bus.provision import open_bucket, ready_layout
from switchyard.protocol.errors import ProtocolError
from switchyard.protocol.subjects import Bucket, JournalKind, Stream
from switchyard.settings import Settings
from switchyard.supervisor.escalation import EscalationIndex, escalation_key

log = structlog.get_logger("switchyard.console")
RUNS_KEPT = 10_000  # the newest runs the workflows page can list
# <workflow id>:<step>:<attempt>:esc…: tokens joined by single colons
ESCALATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}(:[A-Za-z0-9_-]{1,64}){1,6}")


class Claim(msgspec.Struct, kw_only=True):
    reviewer: str
    at: float


@dataclass
class Run:
    id: str
    workflow: str
    submitted_at: float
    status: str = "running"  # until its outcome: running, or waiting_human while escalated
    finished_at: float = 0.0
    reason: str = ""


class ClaimedByOther(Exception):
    def __init__(self, claim: Claim) -> None:
        super().__init__(f"claimed by {claim.reviewer}")
        self.claim = claim


class ConsoleBus:
    def __init__(self, settings: Settings, *, claim_s: float = 900.0) -> None:
        self.settings = settings
        self.s = settings.subjects
        self.claim_s = claim_s
        self.connected = False
        self.version = 0  # bumped on every change the pages show
        # set, and replaced, at every change: what a page waiting on the version awaits
        self._changed = asyncio.Event()
        self.runs: OrderedDict[str, Run] = OrderedDict()
        self._watches: list[asyncio.Task[None]] = []
        self._subs: list[Any] = []
        self.nc: Client | None = None
        self._rewatching: asyncio.Task[None] | None = None
        self.open: dict[str, Escalation] = {}  # the escalations waiting, by key, as watched

    # connection ---------------------------------------------------------------------------------

    async def start(self) -> None:
        async def disconnected() -> None:
            self.connected = False
            await self.bump()

        async def reconnected() -> None:
            # the watches start over, away from nats-py's reconnect loop, and the pages say
            # "connected" only once they are up again
            if self._rewatching is None or self._rewatching.done():
                self._rewatching = asyncio.create_task(self._rewatch())

        async def error(exc: Exception) -> None:
            log.warning("console.nats_error", error=str(exc))

        self.nc = await nats.connect(
            servers(self.settings.nats_url), name="switchyard-console",
            max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5,
            allow_reconnect=True, disconnected_cb=disconnected, reconnected_cb=reconnected,
            error_cb=error, **self.settings.connect_options())
        self.client = SwitchyardClient(self.nc, self.s)
        await ready_layout(self.nc.jetstream(), self.s, provisions=self.settings.provisions,
                           replicas=self.settings.replicas,
                           trail_max_age=self.settings.trail_max_age_s)
        self.connected = True
        await self._watch()

    async def _rewatch(self) -> None:
        delay = 0.2
        while self.nc is not None and not self.nc.is_closed:
            try:
                await self._watch()
            except Exception as exc:  # JetStream not back yet (no leader, a timeout)
                log.warning("console.rewatch", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)  # nothing announces that JetStream is back
                delay = min(5.0, delay * 2)
                continue
            self.connected = True
            await self.bump()
            return

    async def stop(self) -> None:
        if self._rewatching is not None:
            self._rewatching.cancel()
        await self._unwatch()
        if self.nc is not None:
            await self.nc.close()

    async def bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, seen: int, timeout: float) -> int:
        """The version once it is past ``seen``, or after ``timeout`` as it is. (Not a
        Condition under ``wait_for``: on Python 3.11 its timeout can leave the lock released
        twice, "Lock is not acquired", and the page's event stream died of it.)"""
        event = self._changed
        if self.version <= seen:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        return self.version

    async def _unwatch(self) -> None:
        for task in self._watches:
            task.cancel()
        for task in self._watches:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._watches, self._subs = [], []

    async def _watch(self) -> None:
        await self._unwatch()
        assert self.nc is not None
        js = self.nc.jetstream()
        self.escalations = await open_bucket(js, self.s.bucket(Bucket.ESCALATIONS))
        self.index = EscalationIndex(self.escalations)
        self.claims = await open_bucket(js, self.s.bucket(Bucket.CLAIMS))
        self.open = {}  # the watch of the escalations replays the latest of each at once
        self._watches.append(asyncio.create_task(self._follow(self.escalations, self.open)))
        self._watches.append(asyncio.create_task(self._follow(self.claims, None)))
        submits = f"{self.s.prefix}.journal.*.{JournalKind.SUBMIT}"
        self._subs.append(await js.subscribe(submits, stream=self.s.stream(Stream.JOURNAL),
                                             ordered_consumer=True, cb=self._submitted))
        self._subs.append(await js.subscribe(self.s.outcome("*"),
                                             stream=self.s.stream(Stream.OUTCOMES),
                                             ordered_consumer=True, cb=self._finished))

    async def _follow(self, kv: KeyValue, into: dict[str, Escalation] | None) -> None:
        """Every change of ``kv`` wakes the pages; the escalations' changes are also kept, so
        the queue is read from memory (not a listing of the bucket per page view)."""
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is not None and into is not None:
                    if entry.value and entry.operation in (None, "PUT"):
                        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                            into[entry.key] = msgspec.json.decode(entry.value, type=Escalation)
                    else:  # decided or expired: deleted, purged
                        into.pop(entry.key, None)
                await self.bump()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _submitted(self, msg: Msg) -> None:
        try:
            req = codec.decode(msg.data, WorkflowRequest)
        except ProtocolError:
            return
        if req.id not in self.runs:
            self.runs[req.id] = Run(req.id, req.workflow, req.submitted_at)
            while len(self.runs) > RUNS_KEPT:
                self.runs.popitem(last=False)
        await self.bump()

    async def _finished(self, msg: Msg) -> None:
        try:
            out = codec.decode(msg.data, Outcome)
        except ProtocolError:
            return
        run = self.runs.setdefault(out.workflow_id, Run(out.workflow_id, out.workflow,
                                                        out.started_at))
        run.status, run.finished_at, run.reason = str(out.status), out.finished_at, out.reason
        await self.bump()

    # the queue ----------------------------------------------------------------------------------

    async def queue(self) -> list[tuple[Escalation, Claim | None]]:
        """What waits for a person, oldest first, each with its claim (if not yet expired)."""
        items = sorted(self.open.values(), key=lambda e: e.created_at)
        return [(e, await self.claim_of(e.id)) for e in items]

    async def escalation(self, escalation_id: str) -> Escalation | None:
        """The open escalation of that id; None also for what could be no escalation's id."""
        if not ESCALATION_ID.fullmatch(escalation_id):
            return None
        try:
            return await self.index.get(escalation_id)
        except InvalidKeyError:
            return None

    async def claim_of(self, escalation_id: str) -> Claim | None:
        try:
            entry = await self.claims.get(escalation_key(escalation_id))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        claim = msgspec.json.decode(entry.value, type=Claim)
        return claim if time.time() - claim.at < self.claim_s else None

    async def claim(self, escalation_id: str, reviewer: str) -> Claim:
        """Claim it for ``reviewer``; a claim of another that has not expired stands."""
        key = escalation_key(escalation_id)
        claim = Claim(reviewer=reviewer, at=time.time())
        data = msgspec.json.encode(claim)
        try:
            entry = await self.claims.get(key)
        except KeyNotFoundError:
            entry = None
        if entry is None or not entry.value:
            try:
                await self.claims.create(key, data)
                return claim
            except KeyWrongLastSequenceError:  # another reviewer, just now
                entry = await self.claims.get(key)
        held = msgspec.json.decode(entry.value or b"{}", type=Claim) if entry.value else None
        if held is not None and held.reviewer != reviewer and time.time() - held.at < self.claim_s:
            raise ClaimedByOther(held)
        try:
            await self.claims.update(key, data, last=entry.revision)
        except KeyWrongLastSequenceError:
            raise ClaimedByOther(await self.claim_of(escalation_id) or claim) from None
        return claim

    async def release(self, escalation_id: str) -> None:
        with contextlib.suppress(KeyNotFoundError):
            await self.claims.purge(escalation_key(escalation_id))

    # runs ---------------------------------------------------------------------------------------

    def status_of(self, run: Run, waiting: set[str]) -> str:
        return "waiting_human" if run.status == "running" and run.id in waiting else run.status

    async def tool_schema(self, tool: str) -> dict[str, Any] | None:
        """The arguments' schema of ``tool``, as a tool host serving it declares it."""
        for svc in await self.client.services(window=0.3):
            for ep in svc.get("endpoints") or []:
                meta = ep.get("metadata") or {}
                if ep.get("name") == tool and meta.get("args_schema"):
                    try:
                        found = msgspec.json.decode(meta["args_schema"])
                    except msgspec.DecodeError:
                        return None
                    return found if isinstance(found, dict) else None
        return None

    async def schema(self, role: str) -> dict[str, Any] | None:
        """The output schema the agents of ``role`` declare (None: none answers)."""
        assert self.nc is not None
        try:
            reply = await self.nc.request(self.s.agent_schema(role), b"", timeout=2)
        except Exception:  # no agent of the role is up, or it does not answer in time
            return None
        try:
            found = msgspec.json.decode(reply.data)
        except msgspec.DecodeError:
            return None
        output = found.get("output") if isinstance(found, dict) else None
        return output if isinstance(output, dict) else None
