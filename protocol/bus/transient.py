"""Riding out a cluster's election: which bus errors mean "not yet", and retrying through them.

When a JetStream cluster loses a node, every stream and consumer that node led has no leader for
a few seconds (about ten on a loaded machine) while the others elect one. Meanwhile a publish to
such a stream finds no one to answer (the server's 503 "no responders", ``NoStreamResponseError``:
nothing was stored), and a JetStream API request about it goes unanswered (a timeout) or is
refused with a 503. None of it says the request is wrong, only that it came too early; a process
that gives up on it (a call answered "internal error", a process dying at start) turns a routine
failover into a failure. ``transient`` says which errors those are; ``ride_out`` retries an
operation through them, bounded, with a short backoff.

A timeout does not say whether the request took effect (the ack may be what was lost): retry
through it only what is safe to repeat (a read, a create-if-missing, a write the stream
deduplicates or that names the revision it replaces).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from nats.errors import ConnectionReconnectingError, NoRespondersError
from nats.js.errors import APIError, NoStreamResponseError

log = structlog.get_logger("switchyard.bus")
T = TypeVar("T")
START_WAIT_S = 60.0  # how long a component's start rides out the bus (an election, a slow node)


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is the bus saying "not now" (no leader yet, no answer in time)."""
    if isinstance(exc, APIError):
        return getattr(exc, "code", None) == 503  # JetStream unavailable, none to answer the API
    return isinstance(exc, (NoStreamResponseError, NoRespondersError, TimeoutError,
                            ConnectionReconnectingError))


async def ride_out(op: Callable[[], Awaitable[T]], *, within: float, what: str) -> T:
    """``await op()``, again after each transient failure until ``within`` seconds have passed;
    then (or on any other error) its error is raised."""
    deadline = time.monotonic() + within
    delay = 0.1
    while True:
        try:
            return await op()
        except Exception as exc:
            if not transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.info("bus.retrying", what=what, error=type(exc).__name__)
        await asyncio.sleep(delay)  # backoff: no client is told when an election ends
        delay = min(2 * delay, 1.0)
