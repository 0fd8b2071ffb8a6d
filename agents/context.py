"""TaskContext: what a handler sees besides its input."""

from __future__ import annotations

import functools
import time
from typing import Any

import structlog
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import BaseModel

from switchyard.agents.model import ModelClient
from switchyard.protocol import codec, faults
from switchyard.protocol.errors import ErrorCode, ToolError
from switchyard.protocol.grants import call_digest
from switchyard.protocol.headers import TRACEPARENT
from switchyard.protocol.messages import Task, ToolCall, ToolResult, Usage
from switchyard.protocol.subjects import Subjects

_KNOWN_CODES = frozenset(code.value for code in ErrorCode)


class TaskContext:
    """The task being worked, its earlier step outputs, a tool client under its grant, a logger."""

    def __init__(
        self,
        task: Task,
        *,
        nc: Client,
        subjects: Subjects,
        traceparent: str = "",
        model: ModelClient | None = None,
        tool_timeout: float = 10.0,
    ) -> None:
        self.task = task
        self.model = model
        self.usage = Usage()
        self._nc = nc
        self._subjects = subjects
        self._traceparent = traceparent
        self._tool_timeout = tool_timeout
        self._calls = 0
        self.tool_calls: list[dict[str, Any]] = []

    @functools.cached_property
    def log(self) -> Any:
        """A structlog logger bound to this task (made on first use: most handlers never log)."""
        t = self.task
        return structlog.get_logger("switchyard.agent").bind(
            workflow_id=t.workflow_id, task_id=t.id, step=t.step, role=t.role)

    @property
    def workflow_id(self) -> str:
        return self.task.workflow_id

    @property
    def deadline(self) -> float:
        """Epoch seconds by which the supervisor expects the result (0 means none)."""
        return self.task.deadline

    @property
    def outputs(self) -> dict[str, Any]:
        """Outputs of the workflow's earlier steps, by step name."""
        return self.task.context.get("steps", {})  # type: ignore[no-any-return]

    @property
    def workflow_input(self) -> dict[str, Any]:
        return self.task.context.get("input", {})  # type: ignore[no-any-return]

    async def call_tool(self, name: str, args: BaseModel | dict[str, Any]) -> dict[str, Any]:
        """Call tool ``name`` over the bus under this task's grant; raise ``ToolError`` if refused."""
        payload = args.model_dump(mode="json") if isinstance(args, BaseModel) else args
        self._calls += 1
        call = ToolCall(
            tool=name,
            args=payload,
            grant=self.task.grant,
            task_id=self.task.id,
            workflow_id=self.task.workflow_id,
            # workflow, step and call index, not the attempt: a retried or redelivered task makes
            # the same calls under the same keys, and the tool host runs each effect once
            idempotency_key=f"{self.task.workflow_id}:{self.task.step}:{self._calls}",
        )
        timeout = self._tool_timeout
        if self.task.deadline:
            timeout = max(0.1, min(timeout, self.task.deadline - time.time()))
        headers = {TRACEPARENT: self._traceparent} if self._traceparent else None
        faults.hit("agent.before_tool_call")
        try:
            reply = await self._nc.request(
                self._subjects.tool(name, self.task.role), codec.encode(call), timeout=timeout,
                headers=headers,
            )
        except NoRespondersError:
            raise ToolError(f"no tool host serves {name!r}", retryable=True) from None
        except NatsTimeoutError:
            raise ToolError(
                f"tool {name!r} did not answer within {timeout:.1f} s",
                code=ErrorCode.TIMEOUT, retryable=True,
            ) from None
        faults.hit("agent.after_tool_call")
        result = codec.decode(reply.data, ToolResult)
        self.tool_calls.append({"tool": name, "ok": result.ok, "approved_by": result.approved_by})
        if not result.ok:
            err = result.error
            code = ErrorCode(err.code) if err and err.code in _KNOWN_CODES else ErrorCode.TOOL_FAILED
            raise ToolError(
                err.message if err else f"tool {name} failed", code=code,
                retryable=bool(err and err.retryable),
                details={"tool": name, "args": payload, "digest": call_digest(name, payload)},
            )
        return result.result or {}
