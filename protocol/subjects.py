"""Subject, stream and bucket names, all derived from one prefix (default ``sy``).

Several deployments can share one NATS server by choosing different prefixes: every subject starts
with the prefix, every stream name with its upper-case form, every KV bucket with its lower-case
form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from switchyard.protocol.errors import ConfigError

DEFAULT_PREFIX = "sy"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Stream(StrEnum):
    """The JetStream streams of a deployment, by short name (``Subjects.stream`` makes ``SY_TASKS``)."""

    WORKFLOWS = "workflows"  # submissions (work queue)
    OUTCOMES = "outcomes"  # the final word per workflow
    TASKS = "tasks"  # work for agents (work queue)
    RESULTS = "results"  # agents' answers
    HUMAN = "human"  # escalations and decisions (work queue)
    EVENTS = "events"  # the audit trail
    DLQ = "dlq"  # dead letters
    ADVISORIES = "advisories"  # the server's max-deliveries advisories for tasks


class Bucket(StrEnum):
    """The key-value buckets, by short name (``Subjects.bucket`` makes ``sy_workflows``)."""

    WORKFLOWS = "workflows"  # workflow state
    ESCALATIONS = "escalations"  # what waits for a person
    WORKFLOW_DEFS = "workflow_defs"  # workflow definitions put on the bus
    TRUST = "trust"  # the supervisor's public key
    TOOL_LEDGER = "tool_ledger"  # recorded side-effecting calls and spent budgets


class Durable(StrEnum):
    """The supervisor's durable consumers (an agent's durable is its role)."""

    SUBMIT = "supervisor-submit"
    RESULTS = "supervisor-results"
    DECISIONS = "supervisor-decisions"
    ADVISORIES = "supervisor-advisories"


class DeadLetterKind(StrEnum):
    """What a dead letter was: its subject is ``<prefix>.dlq.<kind>``."""

    TASK = "task"
    RESULT = "result"
    TOOL = "tool"
    SUBMIT = "submit"
    DECISION = "decision"


TRUST_KEY = "supervisor"  # the key in bucket <prefix>_trust holding the trusted issuers


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

    def agent_schema(self, role: str) -> str:
        """The micro endpoint where an agent of ``role`` answers with its input/output schemas."""
        return f"{self.prefix}.agent.{check_token('role', role)}.schema"

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
        """One workflow's audit chain. The id is checked, never rewritten: two ids can never
        share a chain by "sanitising" alike."""
        return f"{self.prefix}.event.{check_token('workflow id', workflow_id)}"

    @property
    def unattributed(self) -> str:
        """The chain of records about inputs whose workflow cannot be known (an id that is not a
        token, an unknown workflow). No workflow can claim it: its ids are single tokens under
        ``<prefix>.event``."""
        return f"{self.prefix}.audit.unattributed"

    def dlq(self, kind: str) -> str:
        return f"{self.prefix}.dlq.{check_token('dead-letter kind', kind)}"

    def all(self, family: str) -> str:
        """Wildcard over one family: ``all('task')`` is ``sy.task.>``."""
        return f"{self.prefix}.{family}.>"

    # streams and buckets
    @property
    def max_deliveries(self) -> str:
        """The server's advisory that a task was delivered ``max_deliver`` times, unacked."""
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream(Stream.TASKS)}.*"

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
