"""PullConsumer: a durable pull consumer's messages handed to a callback as they arrive.

nats-py's ``fetch`` is a loop of request, wait, return: with a batch above one it holds the first
message until the batch fills, a status message arrives or the timeout passes (milliseconds of
latency at low load), and each call costs a no-wait probe, a timer and a queue. This keeps pull
requests topped up instead, as the Go client's ``Consume`` does: one inbox subscription with a
callback, and a new request whenever what is asked for but not yet delivered falls below half of
the free capacity. Capacity is how many messages are worked on at once: each is handed to the
handler in a task of its own, and holds its unit until that task ends. A request that ends
(expired, or a server limit) says how many of its messages it did not deliver; a consumer that
hears nothing, not even the server's idle heartbeats, for three heartbeat intervals (a reconnect,
a restarted server) asks again from scratch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from switchyard.protocol.bus.tasks import cancel_and_wait

log = structlog.get_logger("switchyard.pull")

STATUS = "Status"
PENDING_MESSAGES = "Nats-Pending-Messages"
HEARTBEAT = "100"


class PullConsumer:
    def __init__(
        self,
        nc: Client,
        stream: str,
        durable: str,
        handler: Callable[[Msg], Coroutine[Any, Any, None]],
        *,
        capacity: int,
        expires: float = 30.0,
        heartbeat: float = 2.0,
        api_prefix: str = "$JS.API",
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._nc = nc
        self._next = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._handler = handler
        self.capacity = capacity
        self._expires_ns = int(expires * 1e9)
        self._heartbeat = heartbeat
        self._heartbeat_ns = int(heartbeat * 1e9)
        self.inflight: dict[asyncio.Task[None], Msg] = {}  # being handled
        self.busy = 0  # delivered and not yet handled
        self.pending = 0  # asked for and not yet delivered
        self._inbox = ""
        self._sub: Subscription | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._heard = time.monotonic()
        self._stopped = False

    async def start(self) -> PullConsumer:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)
        self._watchdog = asyncio.create_task(self._watch())
        await self._top_up()
        return self

    async def stop(self) -> None:
        """Ask for nothing more. Messages already on their way are not handed to the callback
        (they are redelivered after the consumer's ack wait)."""
        self._stopped = True
        await cancel_and_wait(self._watchdog)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.inflight.pop(task, None)
        self.busy -= 1
        if self._wants_more():
            task = asyncio.ensure_future(self._top_up())
            task.add_done_callback(_log_failure)

    def _wants_more(self) -> bool:
        free = self.capacity - self.busy - self.pending
        return not self._stopped and free > 0 and (self.pending == 0 or free * 2 >= self.capacity)

    async def _top_up(self) -> None:
        free = self.capacity - self.busy - self.pending
        if self._stopped or free <= 0:
            return
        self.pending += free
        request = {"batch": free, "expires": self._expires_ns, "idle_heartbeat": self._heartbeat_ns}
        await self._nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)

    async def _on_msg(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        status = msg.headers.get(STATUS) if msg.headers else None
        if status is not None and not msg.reply:
            if status == HEARTBEAT:
                return
            # a request ended (408 expired, 409 a server limit or a leadership change): what it
            # did not deliver is no longer pending
            left = msg.headers.get(PENDING_MESSAGES) if msg.headers else None
            self.pending = max(0, self.pending - int(left)) if left else 0
            if status == "408":
                await self._top_up()
            else:  # asked again by the watchdog, not at once: a refusal must not spin
                log.info("pull.request_ended", status=status, subject=self._next,
                         description=(msg.headers or {}).get("Description", ""))
            return
        if self._stopped:
            return
        self.pending = max(0, self.pending - 1)
        self.busy += 1
        task = asyncio.create_task(self._handler(msg))
        self.inflight[task] = msg
        task.add_done_callback(self._done)
        if self._wants_more():
            await self._top_up()

    async def _watch(self) -> None:
        while not self._stopped:
            await asyncio.sleep(self._heartbeat)
            if self.pending and time.monotonic() - self._heard > 3 * self._heartbeat:
                # our requests are gone (a reconnect, a restarted server): ask again
                self.pending = 0
                self._heard = time.monotonic()
                with contextlib.suppress(Exception):
                    await self._top_up()
            elif self._wants_more():
                with contextlib.suppress(Exception):
                    await self._top_up()


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("pull.request_failed", error=str(task.exception()))
