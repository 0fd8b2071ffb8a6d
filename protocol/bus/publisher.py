"""Publisher: JetStream publishes whose acks come back on one inbox subscription of its own.

``js.publish`` is a request per message: a new token from the system's random source, a future,
and a timer (``wait_for``) per call, then a JSON decode into a dataclass. On the hot path (a
compare-and-set and a task per workflow step) that is a large share of the supervisor's time.
Here every publish gets a counter token on one wildcard inbox, the ack is decoded by msgspec, and
one sweeper fails whatever has waited past its deadline. A refusal comes back as the same
exception ``js.publish`` raises (``BadRequestError`` with the JetStream ``err_code``), so callers
handle both alike. (nats-py's ``publish_async`` has the shape, but a refusal leaves its future
unresolved.)

A publish answered "no responders" (503: the stream has no leader, a cluster is electing one)
was stored nowhere, so it is sent again, with a short backoff, until it is acknowledged or its
deadline passes: a node's loss costs the writers a wait, not a failure each.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Mapping

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import errors as js_errors

from switchyard.protocol.bus.tasks import cancel_and_wait
from switchyard.protocol.headers import MSG_TTL

NO_RESPONDERS = "503"
RESEND_MAX_S = 1.0  # the longest pause between two sends of a publish no one answered


class _Error(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _Error | None = None


_decode_ack = msgspec.json.Decoder(PubAck).decode


class _Waiting:
    """A publish waiting for its ack, with what it takes to send it again."""

    __slots__ = ("data", "deadline", "fut", "headers", "pause", "refused", "subject")

    def __init__(self, fut: asyncio.Future[PubAck], deadline: float, subject: str, data: bytes,
                 headers: dict[str, str] | None) -> None:
        self.fut, self.deadline = fut, deadline
        self.subject, self.data, self.headers = subject, data, headers
        self.pause = 0.05
        self.refused = False  # answered "no responders": nothing was stored


def _refusal(error: _Error) -> js_errors.APIError:
    kind = {400: js_errors.BadRequestError, 404: js_errors.NotFoundError,
            503: js_errors.ServiceUnavailableError}.get(error.code, js_errors.APIError)
    return kind(code=error.code, err_code=error.err_code, description=error.description)


class Publisher:
    def __init__(self, nc: Client, *, timeout: float = 10.0) -> None:
        self._nc = nc
        self.timeout = timeout
        self._prefix = ""
        self._tokens = itertools.count(1)
        self._waiting: dict[str, _Waiting] = {}
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._resends: set[asyncio.Task[None]] = set()
        self.resent = 0  # publishes sent again after "no responders"

    async def start(self) -> Publisher:
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)
        self._sweeper = asyncio.create_task(self._sweep())
        return self

    async def stop(self) -> None:
        await cancel_and_wait(self._sweeper)
        for task in list(self._resends):
            await cancel_and_wait(task)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for waiting in self._waiting.values():
            if not waiting.fut.done():
                waiting.fut.set_exception(js_errors.Error("publisher stopped"))
        self._waiting.clear()

    async def send(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None,
        *, ttl: float | None = None,
    ) -> asyncio.Future[PubAck]:
        """Publish; the returned future resolves with the stream's ack (or its refusal)."""
        if self._sub is None:
            await self.start()
        token = str(next(self._tokens))
        fut: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        if ttl:
            headers = {**(headers or {}), MSG_TTL: str(int(ttl))}
        sent = dict(headers) if headers else None
        self._waiting[token] = _Waiting(fut, time.monotonic() + self.timeout, subject, data, sent)
        try:
            await self._nc.publish(subject, data, reply=self._prefix + token, headers=sent)
        except Exception:
            self._waiting.pop(token, None)
            raise
        return fut

    async def publish(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None,
        *, ttl: float | None = None,
    ) -> PubAck:
        return await (await self.send(subject, data, headers, ttl=ttl))

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix):]
        entry = self._waiting.pop(token, None)
        if entry is None or entry.fut.done():
            return
        fut = entry.fut
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            entry.refused = True
            if time.monotonic() + entry.pause < entry.deadline:  # not stored: send it again
                self._waiting[token] = entry
                task = asyncio.create_task(self._resend(token, entry))
                self._resends.add(task)
                task.add_done_callback(self._resends.discard)
            else:
                fut.set_exception(js_errors.NoStreamResponseError())
            return
        try:
            ack = _decode_ack(msg.data)
        except msgspec.DecodeError as exc:
            fut.set_exception(js_errors.Error(f"unreadable publish ack: {exc}"))
            return
        if ack.error is not None:
            fut.set_exception(_refusal(ack.error))
        else:
            fut.set_result(ack)

    async def _resend(self, token: str, entry: _Waiting) -> None:
        await asyncio.sleep(entry.pause)  # backoff: no client is told when an election ends
        entry.pause = min(2 * entry.pause, RESEND_MAX_S)
        if self._waiting.get(token) is not entry or entry.fut.done():
            return  # timed out meanwhile
        self.resent += 1
        try:
            await self._nc.publish(entry.subject, entry.data, reply=self._prefix + token,
                                   headers=entry.headers)
        except Exception as exc:  # the connection is gone: the caller hears it now
            self._waiting.pop(token, None)
            if not entry.fut.done():
                entry.fut.set_exception(exc)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 4))
            now = time.monotonic()
            late = [t for t, w in self._waiting.items() if w.deadline < now]
            for token in late:
                entry = self._waiting.pop(token)
                if entry.fut.done():
                    continue
                if entry.refused:  # the stream never answered: nothing was stored, say so
                    entry.fut.set_exception(js_errors.NoStreamResponseError())
                else:
                    entry.fut.set_exception(
                        TimeoutError(f"no publish ack within {self.timeout:g} s"))
