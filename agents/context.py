"""TaskContext: what a handler sees besides its input."""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast, overload

import msgspec
import structlog
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError
from structlog.typing import FilteringBoundLogger

from switchyard.agents.model import ModelClient
from switchyard.agents.model.routing import ModelRouter, TaskModels
from switchyard.protocol import codec
from switchyard.protocol.bus import tracing
from switchyard.protocol.bus.faults import Faults
from switchyard.protocol.errors import ErrorCode, ToolError
from switchyard.protocol.grants import call_digest
from switchyard.protocol.headers import TRACEPARENT
from switchyard.protocol.messages import (
    ModelUse,
    Partial,
    Task,
    ToolCall,
    ToolResult,
    Usage,
)
from switchyard.protocol.subjects import Subjects

_KNOWN_CODES = frozenset(code.value for code in ErrorCode)

JSONValue = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]
JSONObject = dict[str, JSONValue]
R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    tool: str
    ok: bool
    approved_by: str  # who approved the call, when it needed a person's approval
    args: dict[str, Any] = field(default_factory=dict)
    dry: bool = False  # run dry (a shadow agent's call): nothing happened
    needs_approval: bool = False  # dry: live, it would have waited for a person
    error: str = ""


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
        models: ModelRouter | None = None,
        tool_timeout: float = 10.0,
        faults: Faults | None = None,
    ) -> None:
        self.task = task
        self.model = model
        self.usage = Usage()
        # the task's model calls, through the step's models, ceilings and cache (None: this
        # process has no model catalogue)
        self.models: TaskModels | None = (
            models.for_task(task.model, on_delta=self.emit if task.stream else None,
                            on_end=self._end_of_reply if task.stream else None,
                            deadline=task.deadline)
            if models is not None else None)
        self.local_model = ""  # a reference agent's in-process model, by its catalogue name
        self._partials = 0
        self._nc = nc
        self._subjects = subjects
        self._traceparent = traceparent
        self._tool_timeout = tool_timeout
        self._calls = 0
        self._faults = faults or Faults()
        self.tool_calls: list[ToolCallRecord] = []  # what this task called, in order

    @functools.cached_property
    def log(self) -> FilteringBoundLogger:
        """A structlog logger bound to this task (made on first use: most handlers never log)."""
        t = self.task
        logger: FilteringBoundLogger = structlog.get_logger("switchyard.agent").bind(
            workflow_id=t.workflow_id, task_id=t.id, step=t.step, role=t.role)
        return logger

    @property
    def workflow_id(self) -> str:
        return self.task.workflow_id

    @property
    def deadline(self) -> float:
        """Epoch seconds by which the supervisor expects the result (0 means none)."""
        return self.task.deadline

    @property
    def outputs(self) -> dict[str, JSONObject]:
        """Outputs of the workflow's earlier steps that the step's ``context`` asks for, by name."""
        return cast(dict[str, JSONObject], self.task.context.get("steps", {}))

    @property
    def workflow_input(self) -> JSONObject:
        """The workflow's input, when the step's ``context`` asks for it."""
        return cast(JSONObject, self.task.context.get("input", {}))

    async def emit(self, text: str, *, done: bool = False) -> None:
        """Send partial output (model tokens, progress) to whoever watches this workflow live
        (``switchyard submit --stream``): core NATS, at most once, never stored. The result the
        handler returns is what counts."""
        self._partials += 1
        t = self.task
        partial = Partial(workflow_id=t.workflow_id, task_id=t.id, step=t.step,
                          seq=self._partials, text=text, done=done)
        with contextlib.suppress(Exception):  # nobody may be listening; nothing depends on it
            await self._nc.publish(self._subjects.partial(t.workflow_id), codec.encode(partial))

    async def _end_of_reply(self) -> None:
        await self.emit("", done=True)

    def model_use(self) -> tuple[Usage, ModelUse | None]:
        """What the task used of models, for its result."""
        if self.models is not None and self.models.calls:
            return self.usage.plus(self.models.usage), self.models.use()
        if self.local_model:
            return (msgspec.structs.replace(self.usage, model=self.local_model),
                    ModelUse(model=self.local_model, reason="the reference agent's local model"))
        return self.usage, None

    @overload
    async def call_tool(self, name: str, args: BaseModel | JSONObject, *,
                        key: str = "") -> JSONObject: ...

    @overload
    async def call_tool(self, name: str, args: BaseModel | JSONObject, result: type[R], *,
                        key: str = "") -> R: ...

    async def call_tool(
        self, name: str, args: BaseModel | JSONObject, result: type[R] | None = None, *,
        key: str = "",
    ) -> JSONObject | R:
        """Call tool ``name`` over the bus under this task's grant; raise ``ToolError`` if refused.
        With ``result`` (a pydantic model), the reply is validated into it (``invalid_output``
        if it does not fit); without, it is the JSON object the tool returned.

        The call's idempotency key is the workflow, the step and, by default, the call's
        position in the task (the same calls in the same order on a retry); give ``key`` when
        the order may differ between attempts (a model choosing the calls), for instance the
        call's digest."""
        payload: dict[str, Any] = (
            args.model_dump(mode="json") if isinstance(args, BaseModel) else dict(args))
        if self.task.replaced:  # a person approved this held call with arguments of theirs
            payload = dict(self.task.replaced.get(call_digest(name, payload), payload))
        self._calls += 1
        call = ToolCall(
            tool=name,
            args=payload,
            grant=self.task.grant,
            task_id=self.task.id,
            workflow_id=self.task.workflow_id,
            # workflow, step and call index, not the attempt: a retried or redelivered task makes
            # the same calls under the same keys, and the tool host runs each effect once
            idempotency_key=f"{self.task.workflow_id}:{self.task.step}:{key or self._calls}",
        )
        timeout = self._tool_timeout
        if self.task.deadline:
            timeout = max(0.1, min(timeout, self.task.deadline - time.time()))
        self._faults.hit("agent.before_tool_call")
        subject = self._subjects.tool(name, self.task.role)
        try:
            with tracing.TRACER.start_as_current_span(
                    f"execute_tool {name}", kind=SpanKind.CLIENT, attributes={
                        tracing.GEN_AI_OPERATION: "execute_tool", tracing.GEN_AI_TOOL_NAME: name,
                        tracing.MESSAGING_SYSTEM: "nats", tracing.MESSAGING_DESTINATION: subject,
                        tracing.MESSAGING_OPERATION_TYPE: "send",
                        tracing.WORKFLOW_ID: self.task.workflow_id}) as span:
                tracing.set_content(span, tracing.GEN_AI_TOOL_CALL_ARGUMENTS, call.args)
                parent = tracing.traceparent() or self._traceparent
                reply = await self._nc.request(
                    subject, codec.encode(call), timeout=timeout,
                    headers={TRACEPARENT: parent} if parent else None)
                tracing.set_content(span, tracing.GEN_AI_TOOL_CALL_RESULT, reply.data)
        except NoRespondersError:
            raise ToolError(f"no tool host serves {name!r}", retryable=True) from None
        except NatsTimeoutError:
            raise ToolError(
                f"tool {name!r} did not answer within {timeout:.1f} s",
                code=ErrorCode.TIMEOUT, retryable=True,
            ) from None
        self._faults.hit("agent.after_tool_call")
        answer = codec.decode(reply.data, ToolResult)
        self.tool_calls.append(ToolCallRecord(
            name, answer.ok, answer.approved_by, payload, answer.dry, answer.needs_approval,
            answer.error.message if answer.error else ""))
        if not answer.ok:
            err = answer.error
            code = ErrorCode(err.code) if err and err.code in _KNOWN_CODES else ErrorCode.TOOL_FAILED
            raise ToolError(
                err.message if err else f"tool {name} failed", code=code,
                retryable=bool(err and err.retryable),
                details={"tool": name, "args": payload, "digest": call_digest(name, payload)},
            )
        value = cast(JSONObject, answer.result or {})
        if result is None:
            return value
        try:
            return result.model_validate(value)
        except ValidationError as exc:
            raise ToolError(f"tool {name}'s result does not match {result.__name__}: {exc}",
                            code=ErrorCode.INVALID_OUTPUT) from None
