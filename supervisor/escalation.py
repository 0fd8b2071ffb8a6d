"""The escalation index: which escalations wait for a person, in KV bucket ``<prefix>_escalations``.

The human queue itself is the ``<prefix>.human.queue`` work queue (reviewers claim by pull and
ack). This index lets ``switchyard review`` and ``status`` list what waits without claiming it.
"""

from __future__ import annotations

import msgspec
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from switchyard.protocol.messages import Escalation

_decoder = msgspec.json.Decoder(Escalation)


def escalation_key(escalation_id: str) -> str:
    return escalation_id.replace(":", ".")


class EscalationIndex:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def add(self, escalation: Escalation) -> None:
        await self.kv.put(escalation_key(escalation.id), msgspec.json.encode(escalation))

    async def remove(self, escalation_id: str) -> None:
        try:
            await self.kv.purge(escalation_key(escalation_id))
        except KeyNotFoundError:
            pass

    async def get(self, escalation_id: str) -> Escalation | None:
        try:
            entry = await self.kv.get(escalation_key(escalation_id))
        except KeyNotFoundError:
            return None
        return _decoder.decode(entry.value) if entry.value else None

    async def list(self) -> list[Escalation]:
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            return []
        out = []
        for key in keys:
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                continue
            if entry.value:
                out.append(_decoder.decode(entry.value))
        return sorted(out, key=lambda e: e.created_at)
