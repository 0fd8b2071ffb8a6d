"""Timers: when each waiting workflow must be looked at again (a step's timeout, a retry's
backoff, a person's deadline). The deadlines themselves follow from the journal's fold, and the
supervisor rebuilds this table from the bus on start; this is the in-memory heap that wakes it
at the earliest one. Each workflow has one live entry: a fold sets it (``schedule``), a finished
run drops it (``cancel``), and a scan of the bus only ever brings one forward (``at_most``).
Entries overtaken stay in the heap until their time and are skipped then."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Awaitable, Callable

import structlog
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from switchyard.protocol import codec
from switchyard.protocol.bus.tasks import cancel_and_wait
from switchyard.protocol.errors import ConfigError, ProtocolError
from switchyard.protocol.messages import Task
from switchyard.protocol.subjects import Stream, Subjects, check_token
from switchyard.supervisor.engine import TERMINAL
from switchyard.supervisor.store import Snapshots

log = structlog.get_logger("switchyard.supervisor")


class Timers:
    def __init__(self, fire: Callable[[str], Awaitable[None]]) -> None:
        self._fire = fire
        self._heap: list[tuple[float, str]] = []
        self._at: dict[str, float] = {}  # each workflow's one live entry
        self._wake = asyncio.Event()
        self._running = False
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._at)

    def at_most(self, at: float, workflow_id: str) -> None:
        """Look at ``workflow_id`` by ``at`` at the latest (a scan: the fold knows better)."""
        known = self._at.get(workflow_id)
        if known is None or at < known:
            self.schedule(at, workflow_id)

    def cancel(self, workflow_id: str) -> None:
        self._at.pop(workflow_id, None)

    def schedule(self, at: float, workflow_id: str) -> None:
        if self._at.get(workflow_id) == at:
            return
        self._at[workflow_id] = at
        heapq.heappush(self._heap, (at, workflow_id))
        if self._heap[0][1] == workflow_id:
            self._wake.set()

    def start(self) -> None:
        self._running = True
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self._running = False
        self._wake.set()
        await cancel_and_wait(self._task)

    async def _loop(self) -> None:
        # The flag is checked as well as cancellation: on Python 3.11 a cancel that lands as the
        # asyncio.timeout below expires can come out as a TimeoutError, which is suppressed here.
        while self._running:
            self._wake.clear()
            delay = self._heap[0][0] - time.time() if self._heap else 60.0
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            at, workflow_id = heapq.heappop(self._heap)
            if self._at.get(workflow_id) != at:
                continue  # overtaken: replaced, cancelled or fired already
            del self._at[workflow_id]
            try:
                await self._fire(workflow_id)
            except Exception:
                log.exception("supervisor.timer_failed", workflow_id=workflow_id)
                self.schedule(time.time() + 1.0, workflow_id)


async def rearm(
    timers: Timers, js: JetStreamContext, s: Subjects, snapshots: Snapshots, *, max_bytes: int,
) -> int:
    """Bring each timer the bus implies forward: every task in the work queue (its deadline)
    and every waiting run's snapshot (its retry or a person's deadline). Returns how many."""
    armed = 0
    async for state in snapshots.all():
        if state.status not in TERMINAL and state.timer_at:
            timers.at_most(state.timer_at, state.id)
            armed += 1
    stream, seq = s.stream(Stream.TASKS), 0
    while True:
        try:
            raw = await js.get_msg(stream, seq=seq + 1, subject=s.all("task"), next=True)
        except NotFoundError:
            return armed
        seq = raw.seq or seq + 1
        try:
            task = codec.decode(raw.data or b"", Task, max_bytes=max_bytes)
            check_token("workflow id", task.workflow_id)
        except (ProtocolError, ConfigError):
            continue  # not a task: the stuck-task sweep deals with it
        timers.at_most(task.deadline, task.workflow_id)
        armed += 1
