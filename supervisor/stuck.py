"""Stuck tasks: work in the tasks queue that would otherwise sit there, or loop, for ever.

- A task delivered ``max_deliver`` times and never acknowledged (its agent died of it, or hung):
  the server's advisory is kept on a stream of its own; the task is copied to the dead letters
  with why and its step's history, a notice goes on its workflow's journal (which then moves on
  by its ``on_dead_letter`` policy), and the task is taken off the work queue.
- A task on a subject no consumer serves (a role nobody runs, or a message put there by hand):
  a work queue keeps it until someone takes it, which may be never. Every ``stuck_check_s`` the
  supervisor looks at such subjects; a task no running workflow awaits (malformed, unknown or
  finished workflow, an attempt overtaken) is dead-lettered and removed. One that a workflow does
  await is left for its step's timeout and retries, and ``switchyard status`` lists the subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

import structlog
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from switchyard.protocol import codec
from switchyard.protocol.bus.provision import unserved_subjects
from switchyard.protocol.bus.tasks import cancel_and_wait, periodically
from switchyard.protocol.errors import ConfigError, ErrorCode, ProtocolError
from switchyard.protocol.headers import DLQ_HISTORY
from switchyard.protocol.messages import Task
from switchyard.protocol.subjects import DeadLetterKind, Stream, check_token
from switchyard.supervisor.engine import WorkflowState

if TYPE_CHECKING:
    from switchyard.supervisor.service import Supervisor

log = structlog.get_logger("switchyard.supervisor")
SWEEP_LIMIT = 200  # tasks looked at per unserved subject per sweep


class StuckTasks:
    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        self._task: asyncio.Task[None] | None = None

    def start(self, every: float) -> None:
        self._task = asyncio.create_task(periodically(every, self.sweep,
                                                      "supervisor.stuck_sweep_failed"))

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def on_max_deliveries(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            seq, deliveries = int(advisory["stream_seq"]), int(advisory["deliveries"])
        except (ValueError, KeyError, TypeError):
            await msg.term()
            return
        reason = (f"delivered {deliveries} times to {advisory.get('consumer', '?')} and never "
                  "acknowledged")
        await self._give_up(seq, ErrorCode.RETRIES_EXHAUSTED, reason, deliveries)
        await msg.ack()

    async def sweep(self) -> int:
        """Dead-letter the tasks on unserved subjects that no workflow awaits; returns how many."""
        js: JetStreamContext = self._sup.js
        s = self._sup.config.subjects
        stream = s.stream(Stream.TASKS)
        removed = 0
        for subject in await unserved_subjects(js, s):
            seq = 0
            for _ in range(SWEEP_LIMIT):
                try:
                    raw = await js.get_msg(stream, seq=seq + 1, subject=subject, next=True)
                except NotFoundError:
                    break
                seq = raw.seq or seq + 1
                why = await self._not_awaited(raw.data or b"")
                if why:
                    await self._give_up(seq, ErrorCode.INVALID_INPUT,
                                        f"no consumer serves {subject} and {why}", None)
                    removed += 1
        return removed

    async def _not_awaited(self, data: bytes) -> str:
        """Why no workflow awaits this task ("" when one does)."""
        sup = self._sup
        try:
            task = codec.decode(data, Task, max_bytes=sup.config.max_bytes)
            check_token("workflow id", task.workflow_id)
        except (ProtocolError, ConfigError) as exc:
            return f"it is not a readable task ({exc.message})"
        state = await sup.current(task.workflow_id)
        if state is None:
            return f"no workflow {task.workflow_id!r} is known"
        if state.status != "running" or state.current != task.step or state.attempt != task.attempt:
            return f"workflow {task.workflow_id} no longer awaits step {task.step} attempt {task.attempt}"
        return ""

    async def _give_up(self, seq: int, code: str, reason: str, deliveries: int | None) -> None:
        """Copy task ``seq`` to the dead letters (with its step's history), move its workflow on
        if it awaits that task, and take it off the work queue."""
        sup = self._sup
        js = sup.js
        s = sup.config.subjects
        tasks = s.stream(Stream.TASKS)
        try:
            raw = await js.get_msg(tasks, seq)
        except NotFoundError:
            return  # acknowledged or removed since: nothing is stuck
        data = raw.data or b""
        task: Task | None
        try:
            task = codec.decode(data, Task, max_bytes=sup.config.max_bytes)
            check_token("workflow id", task.workflow_id)
        except (ProtocolError, ConfigError):
            task = None
        state: WorkflowState | None = None
        if task is not None:
            state = await sup.current(task.workflow_id)
        history = [{"attempt": r.attempt, "role": r.role, "status": r.status, "error": r.error}
                   for r in (state.history if state else []) if task and r.step == task.step]
        await sup.dead_letters.send(
            DeadLetterKind.TASK, data, subject=raw.subject or s.all("task"), code=code,
            reason=reason, workflow_id=state.id if state is not None else None, stream_seq=seq,
            deliveries=deliveries, headers={DLQ_HISTORY: json.dumps(history)[:2000]})
        sup.counts["dead_lettered"] += 1
        if task is not None and state is not None:
            await sup.notice(task.workflow_id, task.step, task.attempt, reason)
        with contextlib.suppress(NotFoundError):
            await js.delete_msg(tasks, seq)
