"""DeadLetters: what a component does with an input it cannot accept.

One noun for every component: the original bytes are copied, unchanged, to ``<prefix>.dlq.<kind>``
with why in headers (``dead_letter_headers``), and a ``<kind>.dead_lettered`` entry is appended to
the audit trail: on the input's workflow's chain when that workflow is known, else on the chain no
workflow can claim (``Subjects.unattributed``). The caller then terminates the message (it is
never redelivered) and goes on serving. A copy that cannot be stored raises, so the caller keeps
the message (``nak``) rather than lose it.
"""

from __future__ import annotations

from collections.abc import Mapping

from switchyard.protocol.bus.audit import AuditLog
from switchyard.protocol.bus.publisher import Publisher
from switchyard.protocol.events import EventType
from switchyard.protocol.headers import MSG_ID, dead_letter_headers
from switchyard.protocol.messages import Entry
from switchyard.protocol.subjects import DeadLetterKind, Subjects


class DeadLetters:
    def __init__(self, publisher: Publisher, audit: AuditLog, subjects: Subjects, source: str) -> None:
        self._publisher, self._audit, self._s, self.source = publisher, audit, subjects, source

    async def send(
        self, kind: DeadLetterKind, data: bytes, *, subject: str, code: str, reason: str,
        workflow_id: str | None, stream_seq: int | None = None, deliveries: int | None = None,
        headers: Mapping[str, str] | None = None, facts: Mapping[str, str] | None = None,
        event: EventType | None = None, claimed: str = "",
    ) -> None:
        """Copy ``data`` to the dead letters and audit it. ``workflow_id`` is the workflow the
        input is known to belong to (``None`` when it cannot be known: an id that is no valid
        token, an unknown workflow, an unverified claim). ``event`` names the audit entry when
        ``<kind>.dead_lettered`` is not the word (the tool host's ``tool.refused``); ``claimed``
        is the workflow id the input named when that claim is not vouched for (kept as data)."""
        copy = dead_letter_headers(reason=reason, code=code, subject=subject, source=self.source,
                                   stream_seq=stream_seq, deliveries=deliveries)
        if stream_seq is not None:
            copy[MSG_ID] = f"dlq:{kind}:{stream_seq}"
        copy.update(headers or {})
        await self._publisher.publish(self._s.dlq(kind), data, copy)
        entry: dict[str, object] = {"code": code, "reason": reason, "subject": subject}
        if stream_seq is not None:
            entry["stream_seq"] = stream_seq
        if workflow_id is None and claimed:
            entry["claimed_workflow"] = claimed[:200]
        entry.update(facts or {})
        await self._audit.append(
            workflow_id, [Entry(type=event or EventType.dead_lettered(kind), data=entry)],
            msg_id=f"dlq:{kind}:{stream_seq}" if stream_seq is not None else "")
