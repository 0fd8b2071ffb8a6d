"""Run a coroutine until SIGINT/SIGTERM: the one place in the agent package that touches signals,
used only by the ``Agent.run()`` entry point (the CLI has its own). ``run`` is also what every
Switchyard process runs on: uvloop's event loop when it is installed (``pip install
switchyard[bench]``; ``SWITCHYARD_UVLOOP=0`` turns it off), asyncio's own otherwise."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if os.environ.get("SWITCHYARD_UVLOOP", "1") == "0":
        return None
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return, unused-ignore]


def run(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    run(runner())
