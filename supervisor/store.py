"""WorkflowStore: workflow state in a JetStream key-value bucket, written with compare-and-set.

Every write names the revision it read, so two supervisor replicas can never overwrite each
other: the loser re-reads and re-applies its event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from switchyard.protocol.streams import open_bucket
from switchyard.supervisor.engine import WorkflowState

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(WorkflowState)


class RevisionConflict(Exception):
    """Someone else wrote the key since we read it."""


class WorkflowStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(
        cls, js: JetStreamContext, bucket: str, *, replicas: int = 1, history: int = 1
    ) -> WorkflowStore:
        return cls(await open_bucket(js, bucket, replicas=replicas, history=history))

    async def get(self, workflow_id: str) -> tuple[WorkflowState | None, int]:
        """The state and its revision; (None, 0) when there is none."""
        try:
            entry = await self.kv.get(workflow_id)
        except KeyNotFoundError:
            return None, 0
        if entry.value is None or entry.revision is None:
            return None, 0
        return _decoder.decode(entry.value), entry.revision

    async def put(self, state: WorkflowState, revision: int) -> int:
        """Write ``state`` if the key is still at ``revision`` (0: must not exist yet)."""
        data = _encoder.encode(state)
        try:
            if revision == 0:
                return await self.kv.create(state.id, data)
            return await self.kv.update(state.id, data, last=revision)
        except KeyWrongLastSequenceError:
            raise RevisionConflict(state.id) from None

    async def ids(self) -> list[str]:
        try:
            return list(await self.kv.keys())
        except NoKeysError:
            return []

    async def all(self) -> AsyncIterator[WorkflowState]:
        for key in await self.ids():
            state, _ = await self.get(key)
            if state is not None:
                yield state
