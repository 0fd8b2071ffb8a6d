"""Heartbeat: in-progress acks for a task whose handler is still working (the JetStream twin of
Temporal's ``activity.heartbeat()``), so a long handler is not redelivered."""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.msg import Msg


class Heartbeat:
    """Tells the server every ``interval`` that a task is still being worked on, so a long handler
    is not redelivered; a timer, not a task, as most handlers finish well before the first beat."""

    def __init__(self, msg: Msg, interval: float) -> None:
        self._msg, self._interval = msg, interval
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(interval, self._beat)
        self._sending: asyncio.Task[None] | None = None

    def _beat(self) -> None:
        self._sending = self._loop.create_task(self._send())
        self._handle = self._loop.call_later(self._interval, self._beat)

    async def _send(self) -> None:
        with contextlib.suppress(Exception):
            await self._msg.in_progress()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
