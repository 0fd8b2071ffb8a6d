"""Shadow agents, as the supervisor sees them: which roles have one running (they register in
the ``shadows`` bucket, and refresh it), and the copy of each task of such a role, under a dry
grant, on ``<prefix>.shadow.task.<role>``.

A copy is sent after the task itself and is never waited for: a shadow that is slow, gone or
failing changes nothing for the live run. Its grant is the task's own, marked ``dry``, so the
tool host runs its calls dry (and the live task's budget is not spent by them)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import structlog
from nats.js.kv import KeyValue

from switchyard.protocol import codec, grants
from switchyard.protocol.bus.publisher import Publisher
from switchyard.protocol.headers import MSG_ID, PROTOCOL, TRACEPARENT
from switchyard.protocol.messages import (
    PROTOCOL_VERSION,
    SHADOW_STALE_S,
    ShadowRegistration,
    Task,
)
from switchyard.protocol.subjects import Subjects

log = structlog.get_logger("switchyard.supervisor")

class Shadows:
    def __init__(self, kv: KeyValue, subjects: Subjects, publisher: Publisher,
                 signer: grants.Signer) -> None:
        self.kv, self.s, self.publisher, self.signer = kv, subjects, publisher, signer
        self.seen: dict[str, ShadowRegistration] = {}
        self._watch: asyncio.Task[None] | None = None
        self.copied = 0

    def start(self) -> None:
        self._watch = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    def roles(self) -> list[str]:
        """The roles whose shadows are running (their tasks are copied)."""
        return sorted(r for r in self.seen if self.active(r))

    def active(self, role: str) -> bool:
        reg = self.seen.get(role)
        return reg is not None and time.time() - reg.at < SHADOW_STALE_S

    async def _follow(self) -> None:
        while True:
            try:
                async for entry in await self.kv.watchall():
                    if entry is None:
                        continue
                    if entry.operation in ("DEL", "PURGE") or not entry.value:
                        self.seen.pop(entry.key, None)
                        continue
                    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                        self.seen[entry.key] = msgspec.json.decode(entry.value, type=ShadowRegistration)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the bus went away under the watch: start it again
                log.warning("supervisor.shadow_watch", error=str(exc))
                await asyncio.sleep(1.0)  # nothing announces that JetStream is back

    async def copy(self, task: Task, grant: grants.Grant, traceparent: str) -> None:
        """Send the shadow its copy, under the grant marked dry; a failure is logged only."""
        # its own id and no budget: a tool host from before dry grants (which would read this
        # one as a live grant) refuses every call under it, and spends nothing of the task's
        dry = msgspec.structs.replace(grant, id=f"dry:{grant.id}", budget=0, dry=True)
        # no partial output either: the submitter watches the live agent's
        copy = msgspec.structs.replace(task, grant=self.signer.mint(dry), stream=False)
        try:
            fut = await self.publisher.send(
                self.s.shadow_task(task.role), codec.encode(copy),
                headers={MSG_ID: f"shadow:{task.id}", PROTOCOL: PROTOCOL_VERSION,
                         TRACEPARENT: traceparent})
        except Exception as exc:
            log.warning("supervisor.shadow_copy_failed", task_id=task.id, error=str(exc))
            return
        self.copied += 1
        fut.add_done_callback(_logged)


def _logged(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("supervisor.shadow_copy_failed", error=str(fut.exception()))
