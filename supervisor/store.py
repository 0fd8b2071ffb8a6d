"""WorkflowStore: workflow state in a JetStream key-value bucket, written with compare-and-set.

Every write names the revision it read, so two supervisor replicas can never overwrite each
other: the loser re-reads and re-applies its event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, KeyDeletedError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from switchyard.protocol.bus.provision import WRONG_LAST_SEQUENCE, kv_write, open_bucket
from switchyard.protocol.bus.publisher import Publisher
from switchyard.supervisor.engine import WorkflowState

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(WorkflowState)


class RevisionConflict(Exception):
    """Someone else wrote the key since we read it."""


class WorkflowStore:
    def __init__(
        self, kv: KeyValue, js: JetStreamContext, bucket: str, publisher: Publisher | None = None,
    ) -> None:
        self.kv = kv
        self._bucket = bucket
        self._writer: JetStreamContext | Publisher = publisher or js

    @classmethod
    async def open(
        cls, js: JetStreamContext, bucket: str, *, replicas: int = 1, history: int = 1,
        publisher: Publisher | None = None,
    ) -> WorkflowStore:
        kv = await open_bucket(js, bucket, replicas=replicas, history=history)
        return cls(kv, js, bucket, publisher)

    async def get(self, workflow_id: str) -> tuple[WorkflowState | None, int]:
        """The state and its revision; (None, 0) when there is none."""
        try:
            entry = await self.kv.get(workflow_id)
        except KeyDeletedError as exc:  # removed (aged out): a new one must name the marker
            return None, (exc.entry.revision if exc.entry is not None else 0) or 0
        except KeyNotFoundError:
            return None, 0
        if entry.value is None or entry.revision is None:
            return None, 0
        return _decoder.decode(entry.value), entry.revision

    async def put(self, state: WorkflowState, revision: int, *, ttl: float | None = None) -> int:
        """Write ``state`` if the key is still at ``revision`` (0: must not exist yet); with
        ``ttl``, the server removes the entry that many seconds later (a finished workflow)."""
        try:
            return await kv_write(self._writer, self._bucket, state.id, _encoder.encode(state),
                                  last=revision, ttl=ttl)
        except BadRequestError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise RevisionConflict(state.id) from None
            raise

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
