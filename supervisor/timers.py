"""Timers: when each waiting workflow must be looked at again (a step's timeout, a retry's
backoff, a person's deadline). The deadlines themselves live in the stored state, so they hold
across restarts; this is the in-memory heap that wakes the supervisor at the earliest one."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Awaitable, Callable

import structlog

from switchyard.protocol.bus.tasks import cancel_and_wait

log = structlog.get_logger("switchyard.supervisor")


class Timers:
    def __init__(self, fire: Callable[[str], Awaitable[None]]) -> None:
        self._fire = fire
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._running = False
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, at: float, workflow_id: str) -> None:
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
            _, workflow_id = heapq.heappop(self._heap)
            try:
                await self._fire(workflow_id)
            except Exception:
                log.exception("supervisor.timer_failed", workflow_id=workflow_id)
                self.schedule(time.time() + 1.0, workflow_id)
