"""The tool contract: a typed async function with a name, a risk level and side-effect flags.

```python
@tool(risk="write", side_effects=True)
async def propose_refund(args: RefundArgs) -> RefundResult:
    \"\"\"Record a refund proposal for a customer.\"\"\"
```

The argument and result models come from the signature, the description from the docstring.
A tool may take a second parameter, a ``CallContext``, to see the call's idempotency key; one that
uses it to make its effect happen at most once per key declares ``idempotent=True``.

A tool with effects may say what it would answer without having them, for shadow agents, whose
calls run dry: ``propose_refund = propose_refund.with_dry(simulated)``, where ``simulated`` takes
the same arguments and returns the same model. Without one, a shadow's call to it is refused.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_type_hints, overload

from pydantic import BaseModel

from switchyard.protocol.errors import ConfigError

Risk = Literal["read", "write", "critical"]
R = TypeVar("R", bound=BaseModel)
ToolFn = Callable[..., Awaitable[BaseModel]]


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a tool may know about the call besides its arguments."""

    tool: str
    workflow_id: str
    task_id: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    args_model: type[BaseModel]
    result_model: type[BaseModel]
    fn: ToolFn
    risk: Risk = "read"
    side_effects: bool = False
    idempotent: bool = False
    wants_context: bool = False
    timeout_s: float | None = None  # this tool's own limit; the host's default otherwise
    dry: ToolFn | None = None  # what it answers run dry (a shadow's call), with no effect

    @property
    def has_effects(self) -> bool:
        return self.side_effects or self.risk != "read"

    async def call(self, args: BaseModel, ctx: CallContext) -> BaseModel:
        return await (self.fn(args, ctx) if self.wants_context else self.fn(args))

    async def call_dry(self, args: BaseModel, ctx: CallContext) -> BaseModel:
        """The call with no effect: a tool without effects runs, one with effects answers
        with its dry run (``with_dry``)."""
        if not self.has_effects:
            return await self.call(args, ctx)
        assert self.dry is not None
        takes_context = len(inspect.signature(self.dry).parameters) == 2
        return await (self.dry(args, ctx) if takes_context else self.dry(args))

    def with_dry(self, fn: ToolFn) -> Tool:
        """This tool, answering ``fn``'s result when run dry; ``fn`` takes the same arguments
        (and optionally the ``CallContext``) and returns the same model."""
        args, result = _models(fn)
        if args is not self.args_model or result is not self.result_model:
            raise ConfigError(f"tool {self.name}: its dry run must take {self.args_model.__name__} "
                              f"and return {self.result_model.__name__}")
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(f"tool {self.name}: its dry run must be an async function")
        return dataclasses.replace(self, dry=fn)

    def schema(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "risk": self.risk,
            "side_effects": self.side_effects,
            "idempotent": self.idempotent,
            "dry_run": not self.has_effects or self.dry is not None,
            "args": self.args_model.model_json_schema(),
            "result": self.result_model.model_json_schema(),
        }


def _models(fn: Callable[..., Any]) -> tuple[type[BaseModel], type[BaseModel]]:
    hints = get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    if len(params) not in (1, 2):
        raise ConfigError(
            f"tool {fn.__name__} must take its arguments (a pydantic model) and optionally a "
            "CallContext"
        )
    args, result = hints.get(params[0]), hints.get("return")
    for what, model in (("argument", args), ("return", result)):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(f"tool {fn.__name__}: {what} annotation must be a pydantic model")
    return args, result  # type: ignore[return-value]


@overload
def tool(fn: Callable[..., Awaitable[R]], /) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, risk: Risk = "read", side_effects: bool = False,
    idempotent: bool = False, timeout_s: float | None = None,
) -> Callable[[Callable[..., Awaitable[R]]], Tool]: ...
def tool(
    fn: Callable[..., Awaitable[R]] | None = None,
    /,
    *,
    name: str | None = None,
    risk: Risk = "read",
    side_effects: bool = False,
    idempotent: bool = False,
    timeout_s: float | None = None,
) -> Tool | Callable[[Callable[..., Awaitable[R]]], Tool]:
    """Turn an async function into a ``Tool``."""

    def wrap(f: Callable[..., Awaitable[R]]) -> Tool:
        if not inspect.iscoroutinefunction(f):
            raise ConfigError(f"tool {f.__name__} must be an async function")
        args_model, result_model = _models(f)
        return Tool(
            name=name or f.__name__,
            description=inspect.cleandoc(f.__doc__ or "").split("\n\n", 1)[0],
            args_model=args_model,
            result_model=result_model,
            fn=f,
            risk=risk,
            side_effects=side_effects,
            idempotent=idempotent,
            wants_context=len(inspect.signature(f).parameters) == 2,
            timeout_s=timeout_s,
        )

    return wrap(fn) if fn is not None else wrap


def validation_message(exc: Any) -> str:
    """The first problem of a pydantic ``ValidationError``, as ``where: what``."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"{where}: {err['msg']}"
