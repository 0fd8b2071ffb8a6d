"""The tool contract: a typed async function with a name, a risk level and side-effect flag.

```python
@tool(risk="write", side_effects=True)
async def propose_refund(args: RefundArgs) -> RefundResult:
    \"\"\"Record a refund proposal for a customer.\"\"\"
```

The argument and result models come from the signature, the description from the docstring.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_type_hints, overload

from pydantic import BaseModel

from switchyard.protocol.errors import ConfigError

Risk = Literal["read", "write", "critical"]
A = TypeVar("A", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)
ToolFn = Callable[[Any], Awaitable[BaseModel]]


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    args_model: type[BaseModel]
    result_model: type[BaseModel]
    fn: ToolFn
    risk: Risk = "read"
    side_effects: bool = False

    def schema(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "risk": self.risk,
            "side_effects": self.side_effects,
            "args": self.args_model.model_json_schema(),
            "result": self.result_model.model_json_schema(),
        }


def _models(fn: Callable[..., Any]) -> tuple[type[BaseModel], type[BaseModel]]:
    hints = get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    if len(params) != 1:
        raise ConfigError(f"tool {fn.__name__} must take exactly one argument (a pydantic model)")
    args, result = hints.get(params[0]), hints.get("return")
    for what, model in (("argument", args), ("return", result)):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(f"tool {fn.__name__}: {what} annotation must be a pydantic model")
    return args, result  # type: ignore[return-value]


@overload
def tool(fn: Callable[[A], Awaitable[R]], /) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, risk: Risk = "read", side_effects: bool = False
) -> Callable[[Callable[[A], Awaitable[R]]], Tool]: ...
def tool(
    fn: Callable[[A], Awaitable[R]] | None = None,
    /,
    *,
    name: str | None = None,
    risk: Risk = "read",
    side_effects: bool = False,
) -> Tool | Callable[[Callable[[A], Awaitable[R]]], Tool]:
    """Turn an async function into a ``Tool``."""

    def wrap(f: Callable[[A], Awaitable[R]]) -> Tool:
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
        )

    return wrap(fn) if fn is not None else wrap


def validation_message(exc: Any) -> str:
    """The first problem of a pydantic ``ValidationError``, as ``where: what``."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"{where}: {err['msg']}"
