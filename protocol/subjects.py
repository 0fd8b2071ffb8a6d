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

    JOURNAL = "journal"  # every input of every workflow, one hash-linked chain per workflow
    OUTCOMES = "outcomes"  # the final word per workflow
    TASKS = "tasks"  # work for agents (work queue)
    HUMAN = "human"  # escalations waiting for people (work queue)
    EVENTS = "events"  # what tool hosts and agents record beside the journal (tool calls)
    DLQ = "dlq"  # dead letters
    ADVISORIES = "advisories"  # the server's max-deliveries advisories for tasks
    A2A_EVENTS = "a2a_events"  # the A2A gateway's task events, for every replica's subscribers
    SHADOW = "shadow"  # copies of tasks for shadow agents, and what the shadows made of them


# the streams of the protocol 1 layout: their presence means a data directory from before the
# journal (``provision.check_layout`` says what to do)
OLD_STREAMS = ("workflows", "results")


class Bucket(StrEnum):
    """The key-value buckets, by short name (``Subjects.bucket`` makes ``sy_workflows``)."""

    WORKFLOWS = "workflows"  # snapshots of workflow state (caches of the journal's fold)
    ESCALATIONS = "escalations"  # what waits for a person
    WORKFLOW_DEFS = "workflow_defs"  # workflow definitions put on the bus
    TRUST = "trust"  # the supervisor's public key
    TOOL_LEDGER = "tool_ledger"  # recorded side-effecting calls and spent budgets
    MODEL_CACHE = "model_cache"  # replies of deterministic model calls, each with a TTL
    CLAIMS = "claims"  # which reviewer works on which escalation (the web console)
    A2A_TASKS = "a2a_tasks"  # the A2A gateway's tasks (a2a-sdk's task store), for every replica
    SHADOWS = "shadows"  # the shadow agents running, by role: whose tasks the supervisor copies


class Durable(StrEnum):
    """The supervisor's durable consumers (an agent's durable is its role)."""

    JOURNAL = "supervisor-journal"
    ADVISORIES = "supervisor-advisories"


class JournalKind(StrEnum):
    """What a journal record is: the token after the workflow id in its subject."""

    SUBMIT = "submit"  # the client's WorkflowRequest: always the first record
    RESULT = "result"  # an agent's Result, on ``...result.<role>``
    DECISION = "decision"  # a person's Decision
    TIMER = "timer"  # the supervisor's TimerFired
    NOTICE = "notice"  # the supervisor's Notice (a task dead-lettered, an input refused)


class DeadLetterKind(StrEnum):
    """What a dead letter was: its subject is ``<prefix>.dlq.<kind>``."""

    TASK = "task"
    SHADOW = "shadow"  # a copy of a task a shadow agent could not work
    RESULT = "result"
    TOOL = "tool"
    SUBMIT = "submit"
    DECISION = "decision"
    JOURNAL = "journal"  # a journal record of no kind above (a timer, a notice, an unknown kind)


def shadow_durable(role: str) -> str:
    """The durable consumer a role's shadow agents share, on the shadow stream."""
    return f"shadow-{check_token('role', role)}"


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

    # the journal: one chain of inputs per workflow, ``<prefix>.journal.<workflow id>.<kind>``
    def journal(self, workflow_id: str) -> str:
        """Every record of one workflow's journal (the filter its appends are checked against)."""
        return f"{self.prefix}.journal.{check_token('workflow id', workflow_id)}.>"

    def journal_record(self, workflow_id: str, kind: JournalKind, role: str = "") -> str:
        """Where a record of ``kind`` is appended; a result names its role as the last token, so
        the generated authorization lets each role write only its own results."""
        base = f"{self.prefix}.journal.{check_token('workflow id', workflow_id)}.{kind}"
        if kind == JournalKind.RESULT:
            return f"{base}.{check_token('role', role)}"
        return base

    def submit(self, workflow_id: str) -> str:
        return self.journal_record(workflow_id, JournalKind.SUBMIT)

    def result(self, workflow_id: str, role: str) -> str:
        return self.journal_record(workflow_id, JournalKind.RESULT, role)

    def decision(self, workflow_id: str) -> str:
        return self.journal_record(workflow_id, JournalKind.DECISION)

    def parse_journal(self, subject: str) -> tuple[str, str, str] | None:
        """``(workflow id, kind, role)`` of a journal subject, as written (not yet checked), or
        None if it is not one."""
        head = f"{self.prefix}.journal."
        if not subject.startswith(head):
            return None
        parts = subject[len(head):].split(".")
        if len(parts) == 2:
            return parts[0], parts[1], ""
        if len(parts) == 3:
            return parts[0], parts[1], parts[2]
        return None

    def partial(self, workflow_id: str) -> str:
        """Partial output of a workflow's tasks, live (core NATS, never stored)."""
        return f"{self.prefix}.partial.{check_token('workflow id', workflow_id)}"

    def outcome(self, workflow_id: str) -> str:
        return f"{self.prefix}.workflow.outcome.{workflow_id}"

    def task(self, role: str) -> str:
        return f"{self.prefix}.task.{check_token('role', role)}"

    def shadow_task(self, role: str) -> str:
        """A copy of a task of ``role`` for its shadow agent (under a dry grant)."""
        return f"{self.prefix}.shadow.task.{check_token('role', role)}"

    def shadow_result(self, role: str) -> str:
        """What a shadow agent of ``role`` made of a copied task: never a journal record."""
        return f"{self.prefix}.shadow.result.{check_token('role', role)}"

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

    def event(self, workflow_id: str) -> str:
        """One workflow's chain of tool-call records (beside its journal). The id is checked,
        never rewritten: two ids can never share a chain by "sanitising" alike."""
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


def tool_subject(tool: str, caller: str, prefix: str = DEFAULT_PREFIX) -> str:
    return Subjects(prefix).tool(tool, caller)
