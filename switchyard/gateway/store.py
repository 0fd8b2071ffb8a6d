"""The A2A gateway's state on JetStream, so that any replica serves any task: the a2a-sdk's
versioned task store on a KV bucket (a task's version is its key's revision, so a write that
lost a race is refused, as the SDK's store contract asks), its event stream on a stream (a task's
events on a subject of their own, replayed then followed, so a replica that did not run the task
can subscribe to it), and the index of message ids (a retried ``SendMessage`` finds the task its
first send made)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator

from a2a.server.cluster import (
    ConcurrentTaskModificationError,
    StoredTask,
    TaskEventStream,
    TaskVersion,
    VersionedEvent,
    VersionedTaskStore,
)
from a2a.server.context import ServerCallContext
from a2a.server.events import Event
from a2a.server.owner_resolver import resolve_user_scope
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import ListTasksRequest, ListTasksResponse, StreamResponse, Task, TaskState
from a2a.utils.proto_utils import to_stream_response
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

TERMINAL = frozenset({TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_CANCELED,
                      TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_REJECTED})
VERSION = "Sy-A2A-Version"


def owner_of(context: ServerCallContext) -> str:
    """Who a task belongs to: the API key's name (tasks of one caller are not another's)."""
    return resolve_user_scope(context)


def _owner_key(owner: str) -> str:
    return owner.encode().hex() or "_"


def revision(version: TaskVersion) -> int:
    # the SDK gives a version no accessor; its own stores read the value so too
    return int(version._value)


def task_id_for(owner: str, message_id: str) -> str:
    """The task (and workflow) id a first message makes: derived from who sent it and its
    ``messageId``, so a retried send names the same run."""
    digest = hashlib.sha256(f"{owner}\x00{message_id}".encode()).hexdigest()[:32]
    return f"a2a-{digest}"


class JetStreamTaskStore(VersionedTaskStore):
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    def _key(self, task_id: str, context: ServerCallContext) -> str:
        return f"{_owner_key(owner_of(context))}.{task_id}"

    async def save(self, task: Task, *, event: Event | None, prev: Task | None,
                   prev_version: TaskVersion, context: ServerCallContext) -> TaskVersion:
        key, data = self._key(task.id, context), task.SerializeToString()
        if task.status.state == TaskState.TASK_STATE_CANCELED:
            # a cancel overwrites what is not yet terminal, whatever its version
            while True:
                try:
                    found = await self.kv.get(key)
                except KeyNotFoundError:
                    raise ConcurrentTaskModificationError(task.id) from None
                if Task.FromString(found.value or b"").status.state in TERMINAL:
                    raise ConcurrentTaskModificationError(task.id)
                try:
                    return TaskVersion(await self.kv.update(key, data, last=found.revision))
                except KeyWrongLastSequenceError:
                    continue
        try:
            if prev_version.is_missing:
                return TaskVersion(await self.kv.create(key, data))
            return TaskVersion(await self.kv.update(key, data, last=revision(prev_version)))
        except KeyWrongLastSequenceError:
            raise ConcurrentTaskModificationError(task.id) from None

    async def get(self, task_id: str, context: ServerCallContext) -> StoredTask | None:
        return await self.get_for(owner_of(context), task_id)

    async def get_for(self, owner: str, task_id: str) -> StoredTask | None:
        try:
            found = await self.kv.get(f"{_owner_key(owner)}.{task_id}")
        except KeyNotFoundError:
            return None
        if not found.value:
            return None
        return StoredTask(Task.FromString(found.value), TaskVersion(found.revision or 0))

    async def put_for(self, owner: str, task: Task, prev: TaskVersion) -> TaskVersion:
        """A write outside the SDK's task manager (the run went on after the caller's request
        ended): compare-and-set on ``prev``."""
        key = f"{_owner_key(owner)}.{task.id}"
        try:
            return TaskVersion(await self.kv.update(key, task.SerializeToString(),
                                                    last=revision(prev)))
        except KeyWrongLastSequenceError:
            raise ConcurrentTaskModificationError(task.id) from None

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        """The caller's tasks, filtered, ordered and paged as the SDK's own store does it."""
        prefix = f"{_owner_key(owner_of(context))}."
        try:
            keys = [k for k in await self.kv.keys() if k.startswith(prefix)]
        except NoKeysError:
            keys = []
        mine = InMemoryTaskStore(use_copying=False)
        for key in keys:
            try:
                found = await self.kv.get(key)
            except KeyNotFoundError:
                continue
            if found.value:
                await mine.save(Task.FromString(found.value), context)
        return await mine.list(params, context)

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        await self.kv.delete(self._key(task_id, context))


class JetStreamEventStream(TaskEventStream):
    """Each task's events on ``<subject prefix>.<task id>``, with their version in a header."""

    def __init__(self, js: JetStreamContext, subject_prefix: str, stream: str) -> None:
        self.js, self.prefix, self.stream = js, subject_prefix, stream

    async def publish(self, task_id: str, event: VersionedEvent) -> None:
        await self.js.publish(f"{self.prefix}.{task_id}",
                              to_stream_response(event.event).SerializeToString(),
                              stream=self.stream,
                              headers={VERSION: str(revision(event.version))})

    async def subscribe(
        self, task_id: str, *, after: TaskVersion,
    ) -> AsyncGenerator[VersionedEvent, None]:
        sub = await self.js.subscribe(f"{self.prefix}.{task_id}", stream=self.stream,
                                      ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        try:
            async for msg in sub.messages:
                version = TaskVersion(int((msg.headers or {}).get(VERSION, "0") or 0))
                if not version.is_after(after):
                    continue
                found = StreamResponse.FromString(msg.data)
                kind = found.WhichOneof("payload")
                if kind is None:
                    continue
                yield VersionedEvent(event=getattr(found, kind), version=version)
        finally:
            await sub.unsubscribe()

    async def destroy(self, task_id: str) -> None:
        await self.js.purge_stream(self.stream, subject=f"{self.prefix}.{task_id}")
