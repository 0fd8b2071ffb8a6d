"""What a handler returns or raises besides its output.

- return ``Scored(output, confidence=0.7)`` to say how sure it is (a bare model means 1.0);
- raise ``NeedsHuman(reason)`` to hand the task to a person;
- raise ``Retry(delay=)`` for a passing failure: the task is redelivered after ``delay`` seconds,
  until the delivery budget is spent;
- raise ``Reject(reason)`` for a task that can never succeed: it is dead-lettered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel
from tenacity import RetryCallState, wait_exponential_jitter

T = TypeVar("T", bound=BaseModel)
MAX_RETRY_DELAY = 300.0  # a Retry's delay doubles with each delivery, up to this


@dataclass(frozen=True, slots=True)
class Scored(Generic[T]):
    value: T
    confidence: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence {self.confidence} is outside 0..1")


class NeedsHuman(Exception):
    def __init__(
        self, reason: str, *, confidence: float = 0.0, output: BaseModel | dict[str, object] | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.confidence = confidence
        self.output = output


class Retry(Exception):
    def __init__(self, reason: str = "", *, delay: float = 1.0) -> None:
        super().__init__(reason or f"retry in {delay:g} s")
        self.reason = reason
        self.delay = delay


class Reject(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def retry_delay(base: float, delivered: int) -> float:
    """Exponential backoff with jitter (tenacity's): about ``base * 2**(n-1)`` plus up to ``base``
    at random, capped at ``MAX_RETRY_DELAY``."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = delivered
    wait = wait_exponential_jitter(multiplier=base, max=MAX_RETRY_DELAY, jitter=base)
    return float(wait(state))
