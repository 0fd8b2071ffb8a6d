"""The event loop every Switchyard process runs on: uvloop's when it is installed (``pip install
switchyard[bench]``) and not turned off (``SWITCHYARD_UVLOOP=0``, read by settings), asyncio's
own otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory(enabled: bool = True) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if not enabled:
        return None
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return, unused-ignore]


def run(coro: Coroutine[Any, Any, T], *, uvloop: bool = True) -> T:
    with asyncio.Runner(loop_factory=loop_factory(uvloop)) as runner:
        return runner.run(coro)
