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
from prometheus_client import CollectorRegistry, Gauge

from switchyard.protocol.errors import ErrorCode, ModelError, ToolError

STATES = {"closed": 0, "half-open": 1, "open": 2}


class _Gauge(pybreaker.CircuitBreakerListener):
    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        self.gauge.labels(cb.name).set(STATES.get(new.name, 0))


class Breakers:
    """``metrics``: a registry for ``switchyard_breaker_state`` (0 closed, 1 half-open, 2 open)
    per breaker."""

    def __init__(self, *, fail_max: int = 5, reset_timeout: float = 30.0,
                 metrics: CollectorRegistry | None = None) -> None:
        self.fail_max, self.reset_timeout = fail_max, reset_timeout
        self._by_name: dict[str, pybreaker.CircuitBreaker] = {}
        self._listeners = [_Gauge(Gauge(
            "switchyard_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["name"], registry=metrics))] if metrics is not None else []

    def get(self, name: str) -> pybreaker.CircuitBreaker:
        breaker = self._by_name.get(name)
        if breaker is None:
            breaker = self._by_name[name] = pybreaker.CircuitBreaker(
                fail_max=self.fail_max, reset_timeout=self.reset_timeout, name=name,
                exclude=[_not_a_fault],  # a refusal on the merits says nothing about health
                throw_new_error_on_trip=False,  # the failure that trips it stays what it was
                listeners=self._listeners)
            for listener in self._listeners:
                listener.gauge.labels(name).set(0)
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
