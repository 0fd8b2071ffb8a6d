"""A workflow run as an A2A task: the executor submits the run (its id derived from the caller
and the message id) and follows it to its end, turning what the bus says into the task's
events: a status update per step answered, ``input-required`` while a person is asked, then the
outcome (``completed`` with the output as an artifact, ``rejected``, ``failed``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from a2a.helpers import new_task_from_user_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types import Message, Part, TaskState
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Value
from nats.js.api import DeliverPolicy

from switchyard.client import SwitchyardClient
from switchyard.protocol import Escalation, Outcome, Result, codec
from switchyard.protocol.bus.journal import AlreadyExists
from switchyard.protocol.errors import ProtocolError
from switchyard.protocol.subjects import Bucket
from switchyard.supervisor.escalation import escalation_key

log = structlog.get_logger("switchyard.gateway")


class BadRequest(Exception):
    """What the caller asked cannot be a run (no such skill, an input that is not an object)."""


@dataclass
class Step:
    result: Result


@dataclass
class Waiting:
    escalation: Escalation


@dataclass
class Ended:
    outcome: Outcome


def whole(value: Any) -> Any:
    """``value`` from a protobuf Struct, whose numbers are all doubles: a whole one is an int
    again (a count of 5 stays 5, not 5.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole(v) for v in value]
    return value


def request_of(message: Message, metadata: dict[str, Any],
               allowed: list[str]) -> tuple[str, dict[str, Any]]:
    """The workflow and its input a message asks for: the skill from the message's (or the
    request's) metadata ``skill``, else the caller's only workflow; the input from a data part
    (a JSON object), else ``{"text": <the text parts>}``."""
    meta = {**metadata, **MessageToDict(message.metadata)} if message.HasField("metadata") \
        else dict(metadata)
    skill = meta.get("skill") or (allowed[0] if len(allowed) == 1 else "")
    if not isinstance(skill, str) or not skill:
        raise BadRequest(f"say which skill in the message's metadata (\"skill\"): one of "
                         f"{', '.join(allowed)}")
    if skill not in allowed:
        raise BadRequest(f"no skill {skill!r} for this caller")
    data: dict[str, Any] = {}
    texts = []
    for part in message.parts:
        kind = part.WhichOneof("content")
        if kind == "data":
            value = whole(MessageToDict(part.data))
            if not isinstance(value, dict):
                raise BadRequest("a data part must hold a JSON object (the workflow's input)")
            data.update(value)
        elif kind == "text":
            texts.append(part.text)
    if not data and not texts:
        raise BadRequest("the message has no text and no data part")
    if texts and "text" not in data:
        data["text"] = "\n".join(texts)
    return skill, data


def data_part(value: dict[str, Any]) -> Part:
    proto = Value()
    proto.struct_value.update(value)
    return Part(data=proto)


async def follow(client: SwitchyardClient, wid: str) -> AsyncIterator[Step | Waiting | Ended]:
    """What happens to run ``wid``, as it happens: each result, each escalation opened, and its
    outcome (the last). Watched through ordered consumers from the start, so nothing before the
    call is missed."""
    s, js = client.s, client.js
    events: asyncio.Queue[Step | Waiting | Ended] = asyncio.Queue()

    async def on_record(msg: Any) -> None:
        if ".result." in msg.subject:
            with contextlib.suppress(ProtocolError):
                await events.put(Step(codec.decode(msg.data, Result)))

    async def on_escalation(msg: Any) -> None:
        if msg.data and not (msg.headers or {}).get("KV-Operation"):
            with contextlib.suppress(ProtocolError):
                await events.put(Waiting(codec.decode(msg.data, Escalation)))

    async def on_outcome(msg: Any) -> None:
        with contextlib.suppress(ProtocolError):
            await events.put(Ended(codec.decode(msg.data, Outcome)))

    subs = [
        await js.subscribe(s.journal(wid), ordered_consumer=True, cb=on_record),
        await js.subscribe(f"$KV.{s.bucket(Bucket.ESCALATIONS)}.{escalation_key(wid)}.>",
                           ordered_consumer=True, cb=on_escalation,
                           deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
        await js.subscribe(s.outcome(wid), ordered_consumer=True, cb=on_outcome),
    ]
    try:
        while True:
            event = await events.get()
            yield event
            if isinstance(event, Ended):
                return
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


class WorkflowExecutor(AgentExecutor):
    def __init__(self, client: SwitchyardClient, allowed: Any, runs: Any = None) -> None:
        self.client = client
        self.allowed = allowed  # caller -> the workflows it may call
        self.runs = runs  # a counter of runs submitted, by workflow

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None and context.task_id is not None
        caller = context.call_context.user.user_name if context.call_context else ""
        task = context.current_task or new_task_from_user_message(context.message)
        if context.current_task is None:
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        try:
            workflow, data = request_of(context.message, dict(context.metadata or {}),
                                        self.allowed(caller))
        except BadRequest as exc:
            await updater.reject(updater.new_agent_message([new_text_part(str(exc))]))
            return
        wid = context.task_id
        try:
            await self.client.submit(workflow, data, workflow_id=wid, metadata={
                "a2a_caller": caller, "a2a_message_id": context.message.message_id})
        except AlreadyExists:
            pass  # the same run, submitted by an earlier send of this message
        else:
            if self.runs is not None:
                self.runs.labels(workflow).inc()
        log.info("gateway.submitted", workflow=workflow, workflow_id=wid, caller=caller)
        await self.run(wid, updater)

    async def run(self, wid: str, updater: TaskUpdater) -> None:
        """Follow run ``wid`` to its end, as the task's events."""
        seen: set[str] = set()
        async for event in follow(self.client, wid):
            if isinstance(event, Step):
                r = event.result
                if r.task_id in seen:
                    continue
                seen.add(r.task_id)
                line = f"{r.step} ({r.role}): {r.status}"
                if r.status == "ok":
                    line += f", confidence {r.confidence:.2f}"
                await updater.update_status(
                    TaskState.TASK_STATE_WORKING,
                    message=updater.new_agent_message([new_text_part(line)], metadata={
                        "step": r.step, "role": r.role, "status": r.status,
                        "confidence": r.confidence}))
            elif isinstance(event, Waiting):
                e = event.escalation
                await updater.requires_input(updater.new_agent_message(
                    [new_text_part(f"waiting for a person: {e.reason}")],
                    metadata={"escalation_id": e.id, "kind": e.kind, "step": e.step}))
            else:
                await self.end(event.outcome, updater)

    @staticmethod
    async def end(out: Outcome, updater: TaskUpdater) -> None:
        reason = updater.new_agent_message([new_text_part(out.reason or str(out.status))])
        if out.status == "completed":
            await updater.add_artifact([data_part(json.loads(json.dumps(out.output or {})))],
                                       name="output")
            await updater.complete()
        elif out.status == "rejected":
            await updater.reject(reason)
        else:
            await updater.failed(reason)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """A Switchyard run is not stopped from outside (its journal decides what happens);
        the A2A task ends as canceled, the run goes on and its outcome is kept."""
        assert context.task_id is not None and context.context_id is not None
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.cancel(updater.new_agent_message([new_text_part(
            "canceled for the caller; the Switchyard run goes on to its own end")]))
