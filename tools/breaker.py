"""Circuit breakers, one per tool and per model endpoint (pybreaker's state machine).

A breaker opens after ``fail_max`` failures in a row, refuses calls at once while open (the caller
gets ``circuit_open``, retryable, instead of waiting on something that is down), lets one trial
call through after ``reset_timeout`` seconds (half-open), and closes when it succeeds. Their states
are in each process's ``$SRV.STATS``, so ``switchyard status`` shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pybreaker

from switchyard.protocol.errors import ErrorCode, ModelError, ToolError


class Breakers:
    def __init__(self, *, fail_max: int = 5, reset_timeout: float = 30.0) -> None:
        self.fail_max, self.reset_timeout = fail_max, reset_timeout
        self._by_name: dict[str, pybreaker.CircuitBreaker] = {}

    def get(self, name: str) -> pybreaker.CircuitBreaker:
        breaker = self._by_name.get(name)
        if breaker is None:
            breaker = self._by_name[name] = pybreaker.CircuitBreaker(
                fail_max=self.fail_max, reset_timeout=self.reset_timeout, name=name,
                exclude=[_not_a_fault],  # a refusal on the merits says nothing about health
                throw_new_error_on_trip=False)  # the failure that trips it stays what it was
        return breaker

    @contextlib.contextmanager
    def guard(self, name: str, what: str) -> Iterator[None]:
        """Run the block under ``name``'s breaker; an exception in it counts as a failure (and
        propagates unchanged). Open, it raises ``ToolError(circuit_open)`` without running it."""
        breaker = self.get(name)
        try:
            with breaker.calling():
                yield
        except pybreaker.CircuitBreakerError:
            raise ToolError(
                f"{what} is failing (its circuit opened after {self.fail_max} failures in a "
                f"row); next trial within {self.reset_timeout:g} s", code=ErrorCode.CIRCUIT_OPEN,
                retryable=True) from None

    def state(self, name: str) -> str:
        return self.get(name).current_state

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: {"state": b.current_state, "failures": b.fail_counter}
                for name, b in sorted(self._by_name.items())}



def _not_a_fault(exc: BaseException) -> bool:
    """A refusal on the merits, or the caller giving up (a deadline cancelled the call): no
    sign that the endpoint is unwell."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return True
    return isinstance(exc, (ToolError, ModelError)) and not exc.retryable
