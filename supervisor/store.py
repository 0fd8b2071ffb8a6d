"""Snapshots: a workflow's folded state in a JetStream key-value bucket, as a cache.

A snapshot is written when a run waits (for a person, or a retry's backoff), every
32 inputs, and when a run that had one ends. It names the journal record it was
folded up to, so a reader folds only the records after it. Correctness never depends on one: a
missing or older snapshot only means more of the journal is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from switchyard.protocol.bus.provision import kv_write
from switchyard.protocol.bus.publisher import Publisher
from switchyard.supervisor.engine import WorkflowState

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(WorkflowState)


class Snapshots:
    def __init__(self, kv: KeyValue, bucket: str, publisher: Publisher | None = None) -> None:
        self.kv = kv
        self._bucket = bucket
        self._publisher = publisher

    async def get(self, workflow_id: str) -> WorkflowState | None:
        try:
            entry = await self.kv.get(workflow_id)
        except (KeyDeletedError, KeyNotFoundError):
            return None
        if not entry.value:
            return None
        try:
            return _decoder.decode(entry.value)
        except msgspec.DecodeError:  # a snapshot of another version: fold the journal instead
            return None

    async def put(self, state: WorkflowState, *, ttl: float | None = None) -> None:
        """Write ``state``; with ``ttl`` the server removes it that many seconds later."""
        assert self._publisher is not None, "a read-only view of the snapshots"
        await kv_write(self._publisher, self._bucket, state.id, _encoder.encode(state), ttl=ttl)

    async def ids(self) -> list[str]:
        try:
            return list(await self.kv.keys())
        except NoKeysError:
            return []

    async def all(self) -> AsyncIterator[WorkflowState]:
        for key in await self.ids():
            state = await self.get(key)
            if state is not None:
                yield state
