"""Provisioning by one identity, waiting by the others: processes start in any order."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client

from switchyard.protocol import Subjects
from switchyard.protocol.bus.provision import await_layout, layout_names, provision
from switchyard.protocol.errors import ConfigError


async def test_a_process_that_may_not_create_the_layout_waits_for_it(
    nc: Client, subjects: Subjects,
) -> None:
    js = nc.jetstream()
    told: list[list[str]] = []
    asked = asyncio.Event()

    def waiting(missing: list[str]) -> None:
        told.append(missing)
        asked.set()

    waiter = asyncio.create_task(await_layout(js, subjects, poll=0.05, waiting=waiting))
    async with asyncio.timeout(10):
        await asked.wait()  # it looked, found nothing, and said so
    assert not waiter.done() and told[0] == layout_names(subjects)
    await provision(js, subjects)  # the admin's `switchyard provision`
    async with asyncio.timeout(10):
        await waiter


async def test_waiting_for_a_layout_nobody_creates_ends_saying_who_must(
    nc: Client, subjects: Subjects,
) -> None:
    with pytest.raises(ConfigError, match="switchyard provision` as the admin"):
        await await_layout(nc.jetstream(), subjects, timeout=0.0, poll=0.01)
