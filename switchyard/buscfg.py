"""The bus's own authorization, generated from the tool policy: ``switchyard nats-config``.

One NATS user (an nkey) per identity: the admin that provisions streams and buckets, the
supervisor, the tool host, the human console (the CLI: submit, review, status, trace) and one per
agent role. Every permission is an allow-list; each identity receives replies only under its own
inbox prefix (``_INBOX.<identity>.>``), pulls and acks only its own durable consumer, and may
publish a tool call only on ``<prefix>.tool.<tool>.<its role>`` for the tools the policy gives its
role, so the NATS server refuses what the supervisor would refuse, and a caller's role on a tool
subject is vouched for by the server. Only the admin may delete or purge anything, and the events
stream (the audit trail) denies both to everyone.

The permission sets were found by running the demo under the generated config and reading the
server's log for violations (``tests/e2e/test_secure.py`` keeps it at zero), not by guessing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
from nats.js.client import JetStreamContext

from switchyard.protocol.streams import ensure_streams, open_bucket
from switchyard.protocol.subjects import Subjects
from switchyard.supervisor.policy import Policy
from switchyard.supervisor.workflow import Workflow

ADMIN, SUPERVISOR, TOOLHOST, CONSOLE = "admin", "supervisor", "toolhost", "console"
SUPERVISOR_DURABLES = ("supervisor-submit", "supervisor-results", "supervisor-decisions",
                       "supervisor-advisories")
STREAMS = ("workflows", "outcomes", "tasks", "results", "human", "events", "dlq", "advisories")
BUCKETS = ("workflows", "escalations", "workflow_defs", "trust", "tool_ledger")


def reviewers_durable(queue: str) -> str:
    """The durable consumer the people of a human queue share ("" is the default queue)."""
    return f"reviewers-{queue}" if queue else "reviewers"


def deployment_of(workflows: Iterable[Workflow]) -> tuple[set[str], set[str]]:
    """The agent roles and the named human queues some workflow uses."""
    flows = list(workflows)
    roles = {r for wf in flows for st in wf.steps for r in (st.role, st.fallback_role) if r}
    queues = {q for wf in flows for q in (wf.human_queue, wf.re_escalate_to) if q}
    return roles, queues


def agent_identity(role: str) -> str:
    return f"agent-{role}"


def inbox_prefix(identity: str) -> str:
    return f"_INBOX.{identity}"


def connect_options(seed_file: Path) -> dict[str, Any]:
    """``nats.connect`` options for the identity whose nkey seed is in ``seed_file`` (named
    ``<identity>.nk``): its key, and replies under its own inbox prefix, the only one the bus lets
    it subscribe to."""
    return {"nkeys_seed": str(seed_file), "inbox_prefix": inbox_prefix(seed_file.stem)}


async def provision(js: JetStreamContext, s: Subjects) -> None:
    """As the admin: the streams and buckets the other identities may only use."""
    await ensure_streams(js, s)
    for bucket in BUCKETS:
        await open_bucket(js, s.bucket(bucket), history=5 if bucket == "workflow_defs" else 1)


@dataclass(frozen=True)
class Identity:
    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses: bool = True  # may answer requests it received (micro service $SRV, tool calls)


class _Rules:
    """Subject patterns for one deployment (prefix)."""

    def __init__(self, s: Subjects) -> None:
        self.s = s
        self.p = s.prefix

    def stream(self, name: str) -> str:
        return self.s.stream(name)

    def kv(self, bucket: str) -> str:
        return f"KV_{self.s.bucket(bucket)}"

    def base(self, identity: str) -> tuple[list[str], list[str]]:
        """What every component needs: look up streams and buckets, receive its replies, answer
        ``$SRV`` discovery, and append to the audit trail and dead letters."""
        pub = [
            "$JS.API.INFO", "$JS.API.STREAM.NAMES",
            *(f"$JS.API.STREAM.INFO.{self.stream(n)}" for n in STREAMS),
            *(f"$JS.API.STREAM.INFO.{self.kv(b)}" for b in BUCKETS),
            f"$JS.API.STREAM.MSG.GET.{self.stream('events')}",
            f"$JS.API.DIRECT.GET.{self.stream('events')}.>",
            self.s.event("*"),
        ]
        sub = [f"{inbox_prefix(identity)}.>", "$SRV.*", "$SRV.*.>"]
        return pub, sub

    def kv_read(self, bucket: str) -> list[str]:
        kv = self.kv(bucket)
        return [f"$JS.API.STREAM.MSG.GET.{kv}", f"$JS.API.DIRECT.GET.{kv}",
                f"$JS.API.DIRECT.GET.{kv}.>"]

    def kv_list(self, bucket: str) -> list[str]:
        """Keys and history, through an ephemeral ordered consumer."""
        kv = self.kv(bucket)
        return [f"$JS.API.CONSUMER.CREATE.{kv}", f"$JS.API.CONSUMER.CREATE.{kv}.>",
                f"$JS.API.CONSUMER.DELETE.{kv}.>", f"$JS.API.CONSUMER.INFO.{kv}.>"]

    def kv_write(self, bucket: str) -> list[str]:
        return [*self.kv_read(bucket), f"$KV.{self.s.bucket(bucket)}.>"]

    def durable(self, stream: str, name: str) -> list[str]:
        """Create, read, pull and ack one named durable consumer, and nothing else's."""
        api = "$JS.API.CONSUMER"
        return [f"{api}.INFO.{stream}.{name}", f"{api}.CREATE.{stream}.{name}",
                f"{api}.CREATE.{stream}.{name}.>", f"{api}.DURABLE.CREATE.{stream}.{name}",
                f"{api}.MSG.NEXT.{stream}.{name}", f"$JS.ACK.{stream}.{name}.>"]

    def read_stream(self, stream: str) -> list[str]:
        """Read a stream from the start through ephemeral ordered consumers, and get messages."""
        api = "$JS.API"
        return [f"{api}.CONSUMER.CREATE.{stream}", f"{api}.CONSUMER.CREATE.{stream}.>",
                f"{api}.CONSUMER.DELETE.{stream}.>", f"{api}.CONSUMER.INFO.{stream}.>",
                f"{api}.STREAM.MSG.GET.{stream}", f"{api}.DIRECT.GET.{stream}.>"]


def identities(policy: Policy | None, roles: Iterable[str], s: Subjects,
               queues: Iterable[str] = ()) -> list[Identity]:
    """Every identity of a deployment with these agent roles (and named human queues), with its
    allow-lists."""
    r = _Rules(s)
    p = s.prefix
    out = [Identity(ADMIN, (">",), (">",))]

    pub, sub = r.base(SUPERVISOR)
    pub += [s.all("task"), s.human_queue, f"{s.human_queue}.*", s.all("workflow.outcome"),
            s.all("dlq")]
    for durable, stream in zip(SUPERVISOR_DURABLES, ("workflows", "results", "human", "advisories"),
                               strict=True):
        pub += r.durable(r.stream(stream), durable)
    tasks = r.stream("tasks")  # a task delivered too often: read, dead-lettered, then removed
    pub += [f"$JS.API.STREAM.MSG.GET.{tasks}", f"$JS.API.STREAM.MSG.DELETE.{tasks}"]
    for bucket in ("workflows", "escalations", "workflow_defs", "trust"):
        pub += [*r.kv_write(bucket), *r.kv_list(bucket)]
    sub += [f"{p}.supervisor.status"]  # its micro service's status endpoint
    out.append(Identity(SUPERVISOR, tuple(pub), tuple(sub)))

    pub, sub = r.base(TOOLHOST)
    pub += [s.dlq("tool"), *r.kv_write("tool_ledger"), *r.kv_read("trust")]
    sub += [f"{p}.tool.*.*"]
    out.append(Identity(TOOLHOST, tuple(pub), tuple(sub)))

    pub, sub = r.base(CONSOLE)
    pub += [s.submit, s.human_decision, "$SRV.>", f"{p}.agent.*.schema", f"{p}.supervisor.status",
            *(d for q in ("", *sorted(set(queues))) for d in r.durable(
                r.stream("human"), reviewers_durable(q))),
            *r.read_stream(r.stream("events")),
            *r.read_stream(r.stream("outcomes")), *r.read_stream(r.stream("dlq"))]
    for bucket in ("workflows", "escalations", "workflow_defs"):
        pub += [*r.kv_read(bucket), *r.kv_list(bucket)]
    out.append(Identity(CONSOLE, tuple(pub), tuple(sub), responses=False))

    for role in sorted(set(roles)):
        name = agent_identity(role)
        pub, sub = r.base(name)
        tools = policy.allowed(role) if policy is not None else []
        pub += [s.result(role), s.dlq("task"), *r.durable(r.stream("tasks"), role),
                *r.kv_read("trust"), *(s.tool(t, role) for t in tools)]
        sub += [f"{p}.agent.{role}.schema"]  # its micro service's schema endpoint
        out.append(Identity(name, tuple(pub), tuple(sub)))
    return out


# keys -------------------------------------------------------------------------------------------


class Credentials:
    """One nkey seed file per identity in a directory (mode 0600), created once and reused, so a
    regenerated config keeps every process's identity."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def seed_file(self, identity: str) -> Path:
        path = self.dir / f"{identity}.nk"
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            seed = bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(seed)
        return path

    def connect_options(self, identity: str) -> dict[str, Any]:
        return connect_options(self.seed_file(identity))

    def public_key(self, identity: str) -> str:
        seed = bytearray(self.seed_file(identity).read_bytes().strip())
        return bytes(nkeys.from_seed(seed).public_key).decode()


# rendering --------------------------------------------------------------------------------------


def _quoted(items: Iterable[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def authorization(ids: list[Identity], creds: Credentials) -> str:
    """The ``authorization`` block of a nats-server config."""
    lines = ["authorization {", "  users = ["]
    for ident in ids:
        lines += [
            f"    # {ident.name}",
            "    {",
            f'      nkey: "{creds.public_key(ident.name)}"',
            "      permissions: {",
            f"        publish: {{ allow: {_quoted(ident.publish)} }}",
            f"        subscribe: {{ allow: {_quoted(ident.subscribe)} }}",
        ]
        if ident.responses and ident.name != ADMIN:
            lines.append("        allow_responses: true")
        lines += ["      }", "    }"]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def server_config(auth: str, *, store_dir: Path, port: int = 4222, host: str = "127.0.0.1",
                  sync_always: bool = True) -> str:
    """A whole nats-server config: JetStream on file storage and the authorization."""
    sync = "  sync_interval: always\n" if sync_always else ""
    return (f"listen: {host}:{port}\n"
            f"jetstream {{\n  store_dir: \"{store_dir}\"\n{sync}}}\n" + auth)
