"""What a handler's return value, or its failure, becomes on the wire."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from switchyard.agents.context import TaskContext
from switchyard.agents.signals import Scored
from switchyard.protocol import grants
from switchyard.protocol.errors import GrantScopeError
from switchyard.protocol.messages import ErrorInfo, Result, Task


def make_result(
    task: Task,
    role: str,
    status: str,
    output: dict[str, Any] | None,
    confidence: float,
    reason: str,
    error: ErrorInfo | None,
    instance: str,
    ctx: TaskContext | None,
    started: float | None,
) -> Result:
    result = Result(
        task_id=task.id, workflow_id=task.workflow_id, step=task.step, role=role,
        attempt=task.attempt, status=status,  # type: ignore[arg-type]
        output=output, confidence=confidence, reason=reason or (error.message if error else ""),
        error=error, agent=instance,
        duration_ms=(time.perf_counter() - started) * 1000 if started else 0.0,
    )
    if ctx is not None:
        result.usage, result.model = ctx.model_use()
    return result


def check_grant_fits(grant: grants.Grant, task: Task, role: str, *, dry: bool = False) -> None:
    """The grant is the task's: its task, workflow and role, and dry exactly when the agent is
    a shadow (a live agent never acts under a shadow's grant, nor a shadow under a live one)."""
    if grant.dry != dry:
        raise GrantScopeError("dry", str(grant.dry).lower(), str(dry).lower())
    if grant.task_id != task.id:
        raise GrantScopeError("task", grant.task_id, task.id)
    if grant.workflow_id != task.workflow_id:
        raise GrantScopeError("workflow", grant.workflow_id, task.workflow_id)
    if grant.role != role:
        raise GrantScopeError("role", grant.role, role)


def as_dict(value: BaseModel | dict[str, object] | None) -> dict[str, Any] | None:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def unwrap(value: Any, model: type[BaseModel] | None) -> tuple[dict[str, Any], float]:
    confidence = 1.0
    if isinstance(value, Scored):
        value, confidence = value.value, value.confidence
    if model is not None and not isinstance(value, model):
        value = model.model_validate(value)
    return value.model_dump(mode="json"), confidence
