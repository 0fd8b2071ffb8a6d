"""Tasks of our own: cancelling one without losing a cancellation aimed at us, and periodic jobs.

``task.cancel(); with suppress(CancelledError): await task`` is the common idiom, and it has a
flaw: if the task doing the waiting is itself cancelled meanwhile (a second Ctrl-C, the event
loop shutting down), the suppression swallows that too, and the caller carries on as if nothing
happened; at loop shutdown that hangs the process for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger("switchyard")


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` and wait for it to end; re-raise if our own task was cancelled."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # it failed while stopping: it is stopped, which is what was asked
        pass


async def periodically(every: float, work: Callable[[], Awaitable[object]], name: str) -> None:
    """Run ``work`` every ``every`` seconds until cancelled; a failure is logged, not fatal."""
    while True:
        await asyncio.sleep(every)  # a periodic job: there is no event to wait on
        try:
            await work()
        except Exception:
            log.exception(name)


async def unless_stopped(stop: asyncio.Event, work: Coroutine[object, object, object]) -> bool:
    """Run ``work`` (a start-up: connecting to a bus that may not be up yet) unless ``stop`` is
    set first, which cancels it. Whether it finished; its failure is raised."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # we are cancelled ourselves: so is the start, not left to run on
        stopping.cancel()
        task.cancel()
        await asyncio.wait({task, stopping})
        raise
    await cancel_and_wait(stopping)
    if not task.done():
        await cancel_and_wait(task)
        return False
    task.result()
    return True
