"""Subject, stream and bucket names, all derived from one prefix (default ``sy``).

Several deployments can share one NATS server by choosing different prefixes: every subject starts
with the prefix, every stream name with its upper-case form, every KV bucket with its lower-case
form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from switchyard.protocol.errors import ConfigError

DEFAULT_PREFIX = "sy"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_token(kind: str, value: str) -> str:
    """Return ``value`` if it is usable as one subject token, else raise ``ConfigError``."""
    if not _TOKEN_RE.match(value):
        raise ConfigError(
            f"{kind} {value!r} is not a valid subject token (letters, digits, '_' or '-', 1-64)"
        )
    return value


@dataclass(frozen=True, slots=True)
class Subjects:
    """Every name on the bus for one deployment."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ConfigError(
                f"subject prefix {self.prefix!r} must be lowercase letters, digits or '_', "
                "starting with a letter, at most 32 characters"
            )

    # subjects
    @property
    def submit(self) -> str:
        return f"{self.prefix}.workflow.submit"

    def outcome(self, workflow_id: str) -> str:
        return f"{self.prefix}.workflow.outcome.{workflow_id}"

    def task(self, role: str) -> str:
        return f"{self.prefix}.task.{check_token('role', role)}"

    def result(self, role: str) -> str:
        return f"{self.prefix}.result.{check_token('role', role)}"

    def tool(self, name: str, caller: str) -> str:
        """Where role ``caller`` calls tool ``name``. The caller's role is a subject token so the
        NATS server authenticates it: under the generated bus config a role may publish only
        to its own tokens, and the tool host checks the token against the grant's role."""
        return f"{self.prefix}.tool.{check_token('tool', name)}.{check_token('role', caller)}"

    def tool_endpoint(self, name: str) -> str:
        """What a tool host serves for tool ``name``: calls from every role."""
        return f"{self.prefix}.tool.{check_token('tool', name)}.*"

    def human_queue_for(self, queue: str) -> str:
        """Where escalations for the people of ``queue`` wait ("" is the default queue)."""
        return f"{self.human_queue}.{check_token('queue', queue)}" if queue else self.human_queue

    @property
    def human_queue(self) -> str:
        return f"{self.prefix}.human.queue"

    @property
    def human_decision(self) -> str:
        return f"{self.prefix}.human.decision"

    def event(self, workflow_id: str) -> str:
        return f"{self.prefix}.event.{workflow_id}"

    def dlq(self, kind: str) -> str:
        return f"{self.prefix}.dlq.{check_token('dead-letter kind', kind)}"

    def all(self, family: str) -> str:
        """Wildcard over one family: ``all('task')`` is ``sy.task.>``."""
        return f"{self.prefix}.{family}.>"

    # streams and buckets
    def stream(self, name: str) -> str:
        """``stream('tasks')`` is ``SY_TASKS``."""
        return f"{self.prefix.upper()}_{name.upper()}"

    def bucket(self, name: str) -> str:
        """``bucket('workflows')`` is ``sy_workflows``."""
        return f"{self.prefix}_{name.lower()}"

    def service(self, kind: str) -> str:
        """Name of a NATS micro service: ``sy-agent-triage``, ``sy-toolhost``."""
        return f"{self.prefix}-{kind}"


def task_subject(role: str, prefix: str = DEFAULT_PREFIX) -> str:
    return Subjects(prefix).task(role)


def result_subject(role: str, prefix: str = DEFAULT_PREFIX) -> str:
    return Subjects(prefix).result(role)


def tool_subject(tool: str, caller: str, prefix: str = DEFAULT_PREFIX) -> str:
    return Subjects(prefix).tool(tool, caller)


def safe_token(value: str) -> str:
    """A value from an untrusted message (a workflow id), made safe as one subject token."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in value)[:64]
    return cleaned or "unknown"
