"""SwitchyardClient: submit workflows, wait for outcomes, decide escalations, discover services.

What the CLI's ``submit``, ``review``, ``status`` and ``demo`` are built on, usable from Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import InvalidKeyError, NotFoundError

from switchyard.letters import DeadLetter as DeadLetter
from switchyard.letters import header_str as header_str
from switchyard.letters import workflow_of
from switchyard.protocol import codec
from switchyard.protocol.audit import Verification, verify_chain
from switchyard.protocol.bus.audit import AuditLog
from switchyard.protocol.bus.journal import AlreadyExists as AlreadyExists
from switchyard.protocol.bus.journal import Journal
from switchyard.protocol.bus.provision import open_bucket, unserved_subjects
from switchyard.protocol.errors import ConfigError, ProtocolError
from switchyard.protocol.events import EventType
from switchyard.protocol.headers import (
    MSG_ID,
    PROTOCOL,
)
from switchyard.protocol.journal import TYPES as JOURNAL_TYPES
from switchyard.protocol.journal import Chain, Record, read_all
from switchyard.protocol.messages import (
    PROTOCOL_VERSION,
    Decision,
    DecisionAction,
    Entry,
    Escalation,
    Event,
    Outcome,
    Partial,
    Result,
    WorkflowRequest,
)
from switchyard.protocol.subjects import Bucket, JournalKind, Stream, Subjects, check_token
from switchyard.supervisor.authz import reviewers_durable
from switchyard.supervisor.engine import TERMINAL
from switchyard.supervisor.escalation import EscalationIndex, escalation_key
from switchyard.supervisor.journal import Definitions, Replay, replay
from switchyard.supervisor.store import Snapshots

WaitStatus = Literal["completed", "rejected", "failed", "escalated", "timeout"]


@dataclass
class WaitResult:
    status: WaitStatus
    workflow_id: str
    outcome: Outcome | None = None
    reason: str = ""
    escalation_id: str = ""
    kind: str = ""  # for an escalation: why it waits (low_confidence, approval, ...)


@dataclass
class Audit:
    """What ``audit verify`` says of one workflow."""

    workflow_id: str
    chain: Chain  # the journal's links
    calls: Verification | None  # the tool-call chain, if the run made calls
    replay: Replay
    # what is wrong with the journal: a record whose link is broken now but was taken when it
    # arrived (changed or inserted since), or no journal at all
    problems: list[str]
    # records refused when they arrived (dead-lettered then, and folded as changing nothing):
    # written outside the protocol, and handled
    refused: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems and (self.calls is None or self.calls.ok) and self.replay.ok

    def as_dict(self) -> dict[str, Any]:
        return {"workflow_id": self.workflow_id, "ok": self.ok,
                "journal": {"records": len(self.chain.reads), "last_seq": self.chain.last_seq,
                            "head": self.chain.head, "problems": self.problems,
                            "refused_on_arrival": self.refused},
                "calls": self.calls.as_dict() if self.calls is not None else None,
                "replay": {"ok": self.replay.ok, "divergence": self.replay.divergence,
                           "status": self.replay.state.status if self.replay.state else None,
                           "notes": self.replay.notes}}


def _entries(data: bytes) -> list[Entry]:
    try:
        return codec.decode(data, Event).entries
    except ProtocolError:
        return []


def replayed_id(workflow_id: str, dlq_seq: int) -> str:
    """The id a replayed submission runs under: its own, marked with the dead letter's seq."""
    suffix = f"-replay{dlq_seq}"
    return workflow_id[: 64 - len(suffix)] + suffix


class SwitchyardClient:
    def __init__(self, nc: Client, subjects: Subjects | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.s = subjects or Subjects()
        self.journal = Journal(self.js, self.s)
        # escalations this client decided: a wait() right after its decide() is not answered
        # "escalated" by the entry the supervisor has yet to remove
        self._decided: set[str] = set()

    async def submit(
        self, workflow: str, input: dict[str, Any], *, workflow_id: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Begin a run: its submission is the first record of its journal. An id already begun
        raises ``AlreadyExists`` (re-sending the very same request is accepted)."""
        wid = workflow_id if workflow_id is not None else uuid.uuid4().hex
        req = WorkflowRequest(id=wid, workflow=workflow, input=input, submitted_at=time.time(),
                              metadata=metadata or {})
        await self.journal.submit(req)
        return wid

    async def outcome(self, workflow_id: str) -> Outcome | None:
        try:
            msg = await self.js.get_last_msg(self.s.stream(Stream.OUTCOMES), self.s.outcome(workflow_id))
        except NotFoundError:
            return None
        return codec.decode(msg.data or b"", Outcome)

    async def partials(
        self, workflow_id: str, on_partial: Callable[[Partial], Awaitable[None]],
    ) -> Subscription:
        """Watch a run's partial output live (model tokens as its agents stream them): core
        NATS, so only what is sent while subscribed arrives, and nothing of it is stored.
        Agents stream only for a run submitted with ``metadata={"stream": "1"}``; subscribe
        before submitting it. Unsubscribe when done."""
        async def received(msg: Msg) -> None:
            try:
                partial = codec.decode(msg.data, Partial)
            except ProtocolError:
                return  # not ours to judge: the journal holds what counts
            await on_partial(partial)

        return await self.nc.subscribe(self.s.partial(workflow_id), cb=received)

    async def wait(
        self, workflow_id: str, *, timeout: float = 60.0, stop_at_escalation: bool = True
    ) -> WaitResult:
        """Wait until the run ends (its outcome) or, with ``stop_at_escalation``, waits for a
        person (an escalation of it in the index). Both are watched, not polled."""
        check_token("workflow id", workflow_id)
        sub = await self.js.subscribe(self.s.outcome(workflow_id), ordered_consumer=True)
        watcher = None
        waiters: list[asyncio.Task[WaitResult]] = [
            asyncio.ensure_future(self._next_outcome(sub, workflow_id))]
        if stop_at_escalation:  # the index's entries for this run: the latest of each, then new
            bucket = self.s.bucket(Bucket.ESCALATIONS)
            await open_bucket(self.js, bucket)
            watcher = await self.js.subscribe(
                f"$KV.{bucket}.{escalation_key(workflow_id)}.>", ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
            waiters.append(asyncio.ensure_future(self._next_escalation(watcher, workflow_id)))
        try:
            done, _ = await asyncio.wait(waiters, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return WaitResult("timeout", workflow_id)
            results = [t.result() for t in done]
            return next((r for r in results if r.status != "escalated"), results[0])
        finally:
            for t in waiters:
                t.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            with contextlib.suppress(Exception):  # a closing connection drops them anyway
                await sub.unsubscribe()
                if watcher is not None:
                    await watcher.unsubscribe()

    async def _next_outcome(self, sub: Any, workflow_id: str) -> WaitResult:
        while True:
            msg = await sub.next_msg(timeout=None)
            try:
                outcome = codec.decode(msg.data, Outcome)
            except ProtocolError:
                continue
            return WaitResult(outcome.status, workflow_id, outcome, outcome.reason)

    async def _next_escalation(self, sub: Any, workflow_id: str) -> WaitResult:
        while True:
            msg = await sub.next_msg(timeout=None)
            if not msg.data or (msg.headers or {}).get("KV-Operation"):
                continue  # a decided (removed) one
            try:
                esc = codec.decode(msg.data, Escalation)
            except ProtocolError:
                continue
            if esc.id in self._decided:
                continue  # decided here, not yet removed
            return WaitResult("escalated", workflow_id, reason=esc.reason,
                              escalation_id=esc.id, kind=esc.kind)

    async def journal_records(self, workflow_id: str) -> list[Record]:
        """A workflow's journal as stored, up to its last record when this was called."""
        return [r async for r in self.journal.records(workflow_id)]

    async def results(self, workflow_id: str) -> list[Result]:
        """The agents' results on a workflow's journal, in order (one that cannot be read is
        left out: ``audit verify`` names it)."""
        out = []
        for record in await self.journal_records(workflow_id):
            parsed = self.s.parse_journal(record.subject)
            if parsed is None or parsed[1] != JournalKind.RESULT:
                continue
            with contextlib.suppress(ProtocolError):
                out.append(codec.decode(record.data, Result))
        return out

    async def audit(self, workflow_id: str, definitions: Definitions) -> Audit:
        """Check a workflow's journal (the links) and its tool-call chain, and replay the
        journal under ``definitions``, checking it reproduces what was sent."""
        chain = read_all(await self.journal_records(workflow_id), self.s, workflow_id)
        has_calls = await self._has_calls(workflow_id)
        records = await self.records(workflow_id) if has_calls else []
        calls = verify_chain(records) if has_calls else None
        replayed = await replay(chain.reads, definitions, await self.outcome(workflow_id))
        # the supervisor records each journal record it refuses, by sequence, beside the journal
        noted = {e.data.get("stream_seq") for _, data in records for e in _entries(data)
                 if e.type.endswith(".dead_lettered")}
        problems = [] if chain.reads else list(chain.problems)
        refused = []
        for r in chain.reads:
            if r.ok:
                continue
            line = f"seq {r.record.seq} ({r.kind or r.record.subject}): refused: {r.refused}"
            if r.record.seq in noted:
                refused.append(f"{line} (when it arrived, and dead-lettered)")
            else:
                problems.append(f"{line}; it was not refused when it arrived: changed since, or "
                                "inserted around the supervisor")
        return Audit(workflow_id, chain, calls, replayed, problems, refused)

    async def _has_calls(self, workflow_id: str) -> bool:
        try:
            await self.js.get_last_msg(self.s.stream(Stream.EVENTS), self.s.event(workflow_id))
        except NotFoundError:
            return False
        return True

    async def records(
        self, workflow_id: str | None, *, timeout: float = 10.0,
    ) -> list[tuple[int, bytes]]:
        """A workflow's tool-call records (beside its journal) as stored, (stream sequence,
        bytes), up to the last one stored when this was called; ``None`` for the unattributed
        chain."""
        subject = self.s.event(workflow_id) if workflow_id is not None else self.s.unattributed
        try:
            last = await self.js.get_last_msg(self.s.stream(Stream.EVENTS), subject)
        except NotFoundError:
            return []
        sub = await self.js.subscribe(subject, ordered_consumer=True)
        out: list[tuple[int, bytes]] = []
        try:
            async with asyncio.timeout(timeout):
                while not out or out[-1][0] < (last.seq or 0):
                    msg = await sub.next_msg(timeout=None)
                    out.append((msg.metadata.sequence.stream, msg.data))
        finally:
            await sub.unsubscribe()
        return out

    async def events(self, workflow_id: str | None, *, timeout: float = 10.0) -> list[Event]:
        """Every readable audit record of a workflow so far, in order (``audit verify`` names
        the ones that are not)."""
        out: list[Event] = []
        for _, data in await self.records(workflow_id, timeout=timeout):
            try:
                out.append(codec.decode(data, Event))
            except ProtocolError:
                continue
        return out

    async def unserved(self) -> dict[str, int]:
        """Task subjects with waiting tasks and no consumer, with how many wait."""
        return await unserved_subjects(self.js, self.s)

    async def verify(self, workflow_id: str | None, *, timeout: float = 10.0) -> Verification:
        """Check a tool-call chain (or the unattributed one): every record names the hash of
        the one before."""
        return verify_chain(await self.records(workflow_id, timeout=timeout))

    # people ------------------------------------------------------------------------------------

    async def escalations(self, *, queue: str | None = None) -> list[Escalation]:
        """Open escalations; of one queue if given ("" is the default queue)."""
        index = EscalationIndex(await open_bucket(self.js, self.s.bucket(Bucket.ESCALATIONS)))
        return [e for e in await index.list() if queue is None or e.queue == queue]

    async def decide(
        self, escalation_id: str, action: DecisionAction, *, reviewer: str,
        output: dict[str, Any] | None = None, note: str = "",
    ) -> Decision:
        index = EscalationIndex(await open_bucket(self.js, self.s.bucket(Bucket.ESCALATIONS)))
        try:
            esc = await index.get(escalation_id)
        except InvalidKeyError:  # not even a possible id
            esc = None
        if esc is None:
            raise LookupError(f"no open escalation {escalation_id!r}")
        now = time.time()
        appended = await self.journal.append(
            esc.workflow_id, JournalKind.DECISION,
            lambda after, prev: Decision(
                escalation_id=esc.id, workflow_id=esc.workflow_id, action=action,
                reviewer=reviewer, output=output, note=note, decided_at=now, after=after,
                prev=prev),
            after=esc.after, prev=esc.prev, msg_id=f"{esc.id}:decision")
        if appended.duplicate:  # another decision on it reached the journal first
            raise LookupError(f"escalation {esc.id} was decided already, by another decision")
        self._decided.add(esc.id)
        assert isinstance(appended.message, Decision)
        return appended.message

    async def claim(self, timeout: float = 1.0, *, queue: str = "") -> tuple[Escalation, Msg] | None:
        """Pull the next open escalation off a human queue (acking stale ones on the way)."""
        psub = await self.js.pull_subscribe(
            self.s.human_queue_for(queue), durable=reviewers_durable(queue),
            stream=self.s.stream(Stream.HUMAN),
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=600.0),
        )
        index = EscalationIndex(await open_bucket(self.js, self.s.bucket(Bucket.ESCALATIONS)))
        try:
            while True:
                try:
                    msgs = await psub.fetch(1, timeout=timeout)
                except TimeoutError:
                    return None
                msg = msgs[0]
                esc = codec.decode(msg.data, Escalation)
                if await index.get(esc.id) is not None:
                    return esc, msg
                await msg.ack()  # already decided or expired
        finally:
            await psub.unsubscribe()

    # dead letters -------------------------------------------------------------------------------

    async def dead_letters(self, *, kind: str = "", limit: int = 100) -> list[DeadLetter]:
        """The newest ``limit`` dead letters (of one ``kind`` if given), oldest first."""
        stream = self.s.stream(Stream.DLQ)
        info = await self.js.stream_info(stream)
        out: list[DeadLetter] = []
        seq = info.state.last_seq
        while seq >= max(1, info.state.first_seq) and len(out) < limit:
            try:
                letter = DeadLetter.of(await self.js.get_msg(stream, seq))
            except NotFoundError:
                letter = None
            if letter is not None and (not kind or letter.kind == kind):
                out.append(letter)
            seq -= 1
        return out[::-1]

    async def dead_letter(self, seq: int) -> DeadLetter:
        try:
            return DeadLetter.of(await self.js.get_msg(self.s.stream(Stream.DLQ), seq))
        except NotFoundError:
            raise LookupError(f"no dead letter {seq}") from None

    async def replay(self, seq: int, *, operator: str = "operator") -> int:
        """Put a dead letter's original bytes back where they were going, under a new message
        id, and audit it. Returns the new stream sequence. A journal record is appended again
        at its journal's end (as its kind, linked as the protocol says); a refused submission
        starts a new run, ``<id>-replay<seq>``, since a run's id begins its journal once (see
        ``replayed_id``). Tool calls (core request-reply, under a grant that has likely expired)
        are not replayed: retry their task instead."""
        letter = await self.dead_letter(seq)
        if not letter.subject or letter.kind == "tool":
            raise ValueError(f"dead letter {seq} was a {letter.kind or 'unknown'} message on "
                             f"{letter.subject or '?'}: only stream messages can be replayed")
        parsed = self.s.parse_journal(letter.subject)
        if parsed is not None:
            stream_seq = await self._reappend(seq, letter, *parsed)
        else:
            stream_seq = (await self.js.publish(letter.subject, letter.data, headers={
                MSG_ID: f"replay:{seq}:{time.time_ns()}", PROTOCOL: PROTOCOL_VERSION})).seq
        await AuditLog(self.js, self.s, operator).append(workflow_of(letter.data), [Entry(
            type=EventType.DLQ_REPLAYED, data={"dlq_seq": seq, "subject": letter.subject,
                                       "stream_seq": stream_seq, "code": letter.code})])
        return stream_seq

    async def _reappend(self, seq: int, letter: DeadLetter, workflow_id: str, kind: str,
                        role: str) -> int:
        """A refused journal record, appended again as its kind, at the journal's end."""
        kind_type = JOURNAL_TYPES.get(kind)
        if kind_type is None:
            raise ValueError(f"dead letter {seq} is not a kind of journal record ({kind})")
        try:
            check_token("workflow id", workflow_id)
            message = codec.decode(letter.data, kind_type)
        except (ProtocolError, ConfigError) as exc:
            raise ValueError(f"dead letter {seq} cannot be appended as it is: {exc}") from None
        if isinstance(message, WorkflowRequest):
            return await self.journal.submit(msgspec.structs.replace(
                message, id=replayed_id(message.id, seq), submitted_at=time.time()))
        last = await self.journal.last(workflow_id)
        appended = await self.journal.append(
            workflow_id, JournalKind(kind),
            lambda after, prev: msgspec.structs.replace(message, after=after, prev=prev),
            after=last.seq if last else 0, prev=last.digest if last else "", role=role,
            msg_id=f"replay:{seq}")
        return appended.seq

    # discovery ----------------------------------------------------------------------------------

    async def services(self, window: float = 0.5) -> list[dict[str, Any]]:
        """Every micro service answering ``$SRV.INFO``, with its ``$SRV.STATS``."""
        infos = await self._gather("$SRV.INFO", window)
        stats = {s["id"]: s for s in await self._gather("$SRV.STATS", window)}
        return [{**i, "stats": stats.get(i["id"], {})} for i in infos
                if i.get("name", "").startswith(f"{self.s.prefix}-")]

    async def _gather(self, subject: str, window: float) -> list[dict[str, Any]]:
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        out: list[dict[str, Any]] = []
        try:
            await self.nc.publish(subject, b"", reply=inbox)
            deadline = time.monotonic() + window
            while (left := deadline - time.monotonic()) > 0:
                try:
                    msg = await sub.next_msg(timeout=left)
                except TimeoutError:
                    break
                if msg.data:  # an empty message is the server's "no responders" status
                    out.append(json.loads(msg.data))
        finally:
            await sub.unsubscribe()
        return out

    async def workflow_counts(self) -> dict[str, int]:
        """Runs by state, as far as the bus says without a fold: those waiting (their
        snapshots) and those finished (their outcomes); the supervisors report what runs."""
        kv = await open_bucket(self.js, self.s.bucket(Bucket.WORKFLOWS))
        snapshots = Snapshots(kv, self.s.bucket(Bucket.WORKFLOWS))
        counts: Counter[str] = Counter([str(state.status) async for state in snapshots.all()
                                        if state.status not in TERMINAL])
        info = await self.js.stream_info(self.s.stream(Stream.OUTCOMES))
        counts["finished"] = info.state.messages
        return dict(counts)
