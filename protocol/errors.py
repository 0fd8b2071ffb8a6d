"""Errors of Switchyard, and the stable codes they carry on the wire.

The tree::

    SwitchyardError
    ├── ProtocolError
    │   ├── DecodeError
    │   ├── UnsupportedVersionError
    │   └── MessageTooLargeError
    ├── GrantError
    │   ├── GrantInvalidError
    │   │   └── GrantMissingError
    │   ├── GrantExpiredError
    │   ├── GrantScopeError
    │   ├── ToolNotGrantedError
    │   ├── LimitExceededError
    │   └── BudgetExhaustedError
    ├── ToolError
    ├── ModelError
    │   └── ModelBudgetError
    └── ConfigError (also ValueError)

Every exception keeps its facts as attributes and says one lowercase sentence naming the value and
the limit. ``code`` is the stable snake_case string sent on the wire (``ErrorCode``).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable error codes on the wire. Never renamed; new ones may be added."""

    APPROVAL_REJECTED = "approval_rejected"
    APPROVAL_REQUIRED = "approval_required"
    BUDGET_EXHAUSTED = "budget_exhausted"
    CIRCUIT_OPEN = "circuit_open"
    DECODE_ERROR = "decode_error"
    DRY_RUN_UNSUPPORTED = "dry_run_unsupported"
    GRANT_EXPIRED = "grant_expired"
    GRANT_INVALID = "grant_invalid"
    GRANT_MISSING = "grant_missing"
    GRANT_SCOPE = "grant_scope"
    INTERNAL = "internal"
    INVALID_INPUT = "invalid_input"
    INVALID_OUTPUT = "invalid_output"
    LIMIT_EXCEEDED = "limit_exceeded"
    MESSAGE_TOO_LARGE = "message_too_large"
    MODEL_FAILED = "model_failed"
    MODEL_BUDGET = "model_budget"
    OUTCOME_UNKNOWN = "outcome_unknown"
    REJECTED = "rejected"
    RETRIES_EXHAUSTED = "retries_exhausted"
    TIMEOUT = "timeout"
    TOOL_FAILED = "tool_failed"
    TOOL_NOT_GRANTED = "tool_not_granted"
    UNKNOWN_TOOL = "unknown_tool"
    UNSUPPORTED_VERSION = "unsupported_version"


class SwitchyardError(Exception):
    """Root of every error Switchyard raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(SwitchyardError, ValueError):
    """Misuse or bad configuration found at start-up."""


class ProtocolError(SwitchyardError):
    """A message that cannot be accepted as it is."""


class DecodeError(ProtocolError):
    """Malformed bytes or a message that does not match its schema."""

    code = ErrorCode.DECODE_ERROR

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"cannot decode {kind}: {detail}")


class UnsupportedVersionError(ProtocolError):
    code = ErrorCode.UNSUPPORTED_VERSION

    def __init__(self, version: str, supported: str) -> None:
        self.version = version
        self.supported = supported
        super().__init__(
            f"protocol version {version!r} is not supported (this reader speaks {supported}.x)"
        )


class MessageTooLargeError(ProtocolError):
    code = ErrorCode.MESSAGE_TOO_LARGE

    def __init__(self, size: int, limit: int, what: str = "message") -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"{what} of {size} bytes exceeds the limit of {limit} bytes")


class GrantError(SwitchyardError):
    """A tool call or task whose grant does not allow it."""


class GrantInvalidError(GrantError):
    code = ErrorCode.GRANT_INVALID

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"grant rejected: {reason}")


class GrantMissingError(GrantInvalidError):
    code = ErrorCode.GRANT_MISSING

    def __init__(self) -> None:
        super().__init__("no grant was presented")


class GrantExpiredError(GrantError):
    code = ErrorCode.GRANT_EXPIRED

    def __init__(self, task_id: str, expires_at: str, now: str) -> None:
        self.task_id = task_id
        self.expires_at = expires_at
        self.now = now
        super().__init__(f"grant for task {task_id} expired at {expires_at} (now {now})")


class GrantScopeError(GrantError):
    code = ErrorCode.GRANT_SCOPE

    def __init__(self, field: str, granted: str, asked: str) -> None:
        self.field = field
        self.granted = granted
        self.asked = asked
        super().__init__(f"grant is for {field} {granted!r}, not {asked!r}")


class ToolNotGrantedError(GrantError):
    code = ErrorCode.TOOL_NOT_GRANTED

    def __init__(self, tool: str, granted: list[str]) -> None:
        self.tool = tool
        self.granted = granted
        names = ", ".join(granted) or "no tools"
        super().__init__(f"tool {tool!r} is not in the grant (granted: {names})")


class LimitExceededError(GrantError):
    code = ErrorCode.LIMIT_EXCEEDED

    def __init__(
        self, tool: str, argument: str, value: object, limit: float, *, not_a_number: bool = False,
    ) -> None:
        self.tool = tool
        self.argument = argument
        self.value = value
        self.limit = limit
        self.not_a_number = not_a_number
        if not_a_number:
            super().__init__(
                f"{tool}: {argument} must be a number to be checked against its granted limit of "
                f"{limit:g}, not {value!r} ({type(value).__name__})")
        else:
            super().__init__(
                f"{tool}: {argument} of {value} exceeds the granted limit of {limit:g}")


class BudgetExhaustedError(GrantError):
    code = ErrorCode.BUDGET_EXHAUSTED

    def __init__(self, grant_id: str, budget: int) -> None:
        self.grant_id = grant_id
        self.budget = budget
        super().__init__(f"grant {grant_id} has used all {budget} of its tool calls")


class ToolError(SwitchyardError):
    """A tool call that failed; ``retryable`` says whether trying again may help, ``details``
    what a caller needs to act on it (for ``approval_required``: the tool, arguments and digest)."""

    def __init__(
        self, message: str, *, code: ErrorCode = ErrorCode.TOOL_FAILED, retryable: bool = False,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.details = details or {}


class ModelError(SwitchyardError):
    """A model call that failed: the endpoint refused or broke, timed out, or answered with
    something that is not a chat completion. ``retryable`` says whether the same request may
    succeed later (the runtime tries the step's next model either way)."""

    def __init__(self, message: str, *, code: ErrorCode = ErrorCode.MODEL_FAILED,
                 retryable: bool = False, status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.status = status


class ModelBudgetError(ModelError):
    """A model call refused before it was made: it would pass a ceiling on tokens or cost.
    ``scope`` is which: ``left`` (what the step and the run have left: the run's over-budget
    path), ``call`` (the per-call ceiling) or ``context`` (the model's context size); the last
    two only pass the model over for the step's next one."""

    def __init__(self, what: str, needed: float, left: float, unit: str,
                 scope: str = "left") -> None:
        self.what, self.needed, self.left, self.scope = what, needed, left, scope
        super().__init__(f"the call needs up to {needed:g} {unit} but {what} has {left:g} left",
                         code=ErrorCode.MODEL_BUDGET)
