"""Riding out a cluster's election: what is retried, and for how long."""

from __future__ import annotations

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import BadRequestError, NoStreamResponseError, ServiceUnavailableError

from switchyard.protocol.bus.transient import ride_out, transient


def test_transient_is_the_bus_saying_not_yet() -> None:
    assert transient(NoStreamResponseError()) and transient(NatsTimeoutError())
    assert transient(ServiceUnavailableError(code=503))
    assert not transient(BadRequestError(code=400, err_code=10071))
    assert not transient(ValueError("a bug"))


async def test_ride_out_retries_what_is_transient_and_raises_the_rest() -> None:
    tries: list[int] = []

    async def electing() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise NoStreamResponseError
        return "led"

    assert await ride_out(electing, within=10, what="test") == "led" and len(tries) == 3

    async def refused() -> str:
        tries.append(1)
        raise BadRequestError(code=400, err_code=10071)

    tries.clear()
    with pytest.raises(BadRequestError):
        await ride_out(refused, within=10, what="test")
    assert len(tries) == 1

    async def never() -> str:
        raise NatsTimeoutError

    with pytest.raises(NatsTimeoutError):  # bounded: the error once the time is up
        await ride_out(never, within=0.3, what="test")
