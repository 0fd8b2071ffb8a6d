"""The policy compiled into the bus's own authorization: ``switchyard nats-config``.

One NATS user (an nkey) per identity: the admin that provisions streams and buckets, the
supervisor, the tool host, the human console (the CLI: submit, review, status, trace) and one per
agent role. Every permission is an allow-list; each identity receives replies only under its own
inbox prefix (``_INBOX.<identity>.>``), pulls and acks only its own durable consumer, and may
publish a tool call only on ``<prefix>.tool.<tool>.<its role>`` for the tools the policy gives its
role, so the NATS server refuses what the supervisor would refuse, and a caller's role on a tool
subject is vouched for by the server. Journals are written the same way: an agent of role R may
append only ``<prefix>.journal.*.result.R``, the console only submissions and decisions, the
supervisor only timers and notices. Only the admin may delete or purge anything, and the journal
and events streams (the audit trail) deny both to everyone.

The permission sets were found by running the demo under the generated config and reading the
server's log for violations (``tests/e2e/test_secure.py`` keeps it at zero), not by guessing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from switchyard.protocol.errors import ConfigError
from switchyard.protocol.subjects import (
    OLD_STREAMS,
    Bucket,
    DeadLetterKind,
    Durable,
    JournalKind,
    Stream,
    Subjects,
    shadow_durable,
)
from switchyard.supervisor.policy import Policy
from switchyard.supervisor.workflow import Workflow

ADMIN, SUPERVISOR, TOOLHOST, CONSOLE = "admin", "supervisor", "toolhost", "console"
WEB_CONSOLE = "web-console"  # switchyard console: reads, claims and decides; submits nothing
A2A_GATEWAY = "a2a-gateway"  # switchyard a2a serve: submits, follows and (where let) decides
# which stream each of the supervisor's durables reads
SUPERVISOR_DURABLES: Mapping[Durable, Stream] = {
    Durable.JOURNAL: Stream.JOURNAL, Durable.ADVISORIES: Stream.ADVISORIES,
}
STREAMS = tuple(Stream)
BUCKETS = tuple(Bucket)


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


def shadow_identity(role: str) -> str:
    return f"shadow-{role}"


def inbox_prefix(identity: str) -> str:
    return f"_INBOX.{identity}"


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
            # the old layout's streams too: every component looks for them, to refuse clearly
            *(f"$JS.API.STREAM.INFO.{self.stream(n)}" for n in (*STREAMS, *OLD_STREAMS)),
            *(f"$JS.API.STREAM.INFO.{self.kv(b)}" for b in BUCKETS),
            f"$JS.API.STREAM.MSG.GET.{self.stream(Stream.EVENTS)}",
            f"$JS.API.DIRECT.GET.{self.stream(Stream.EVENTS)}.>",
            f"{self.p}.event.*", self.s.unattributed,
        ]
        sub = [f"{inbox_prefix(identity)}.>", "$SRV.*", "$SRV.*.>"]
        return pub, sub

    def journal_append(self, kind: str) -> list[str]:
        """Append records of one kind to any workflow's journal (``kind`` may end in a role),
        and read a journal's last record when another append came first (a direct get, or the
        stream leader's get on a replicated journal)."""
        journal = self.stream(Stream.JOURNAL)
        return [f"{self.p}.journal.*.{kind}", f"$JS.API.DIRECT.GET.{journal}",
                f"$JS.API.DIRECT.GET.{journal}.>", f"$JS.API.STREAM.MSG.GET.{journal}"]

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
    pub += [s.all("task"), s.all("shadow.task"), s.human_queue, f"{s.human_queue}.*",
            s.all("workflow.outcome"),
            s.all("dlq"), *r.journal_append(JournalKind.TIMER),
            *r.journal_append(JournalKind.NOTICE)]
    for durable, stream in SUPERVISOR_DURABLES.items():
        pub += r.durable(r.stream(stream), durable)
    # a stuck task (delivered too often, or on a subject no consumer serves): found, read,
    # dead-lettered, then removed
    tasks = r.stream(Stream.TASKS)
    pub += [f"$JS.API.STREAM.MSG.GET.{tasks}", f"$JS.API.STREAM.MSG.DELETE.{tasks}",
            f"$JS.API.CONSUMER.LIST.{tasks}"]
    for bucket in (Bucket.WORKFLOWS, Bucket.ESCALATIONS, Bucket.WORKFLOW_DEFS, Bucket.TRUST):
        pub += [*r.kv_write(bucket), *r.kv_list(bucket)]
    pub += [*r.kv_read(Bucket.SHADOWS), *r.kv_list(Bucket.SHADOWS)]  # which roles have shadows
    sub += [f"{p}.supervisor.status"]  # its micro service's status endpoint
    out.append(Identity(SUPERVISOR, tuple(pub), tuple(sub)))

    pub, sub = r.base(TOOLHOST)
    pub += [s.dlq(DeadLetterKind.TOOL), *r.kv_write(Bucket.TOOL_LEDGER), *r.kv_read(Bucket.TRUST)]
    sub += [f"{p}.tool.*.*"]
    out.append(Identity(TOOLHOST, tuple(pub), tuple(sub)))

    pub, sub = r.base(CONSOLE)
    pub += [*r.journal_append(JournalKind.SUBMIT), *r.journal_append(JournalKind.DECISION),
            *r.read_stream(r.stream(Stream.JOURNAL)), "$SRV.>", f"{p}.agent.*.schema",
            f"{p}.supervisor.status",
            *(d for q in ("", *sorted(set(queues))) for d in r.durable(
                r.stream(Stream.HUMAN), reviewers_durable(q))),
            *r.read_stream(r.stream(Stream.EVENTS)), f"$JS.API.CONSUMER.LIST.{r.stream(Stream.TASKS)}",
            *r.read_stream(r.stream(Stream.OUTCOMES)), *r.read_stream(r.stream(Stream.DLQ)),
            *r.read_stream(r.stream(Stream.SHADOW))]  # `eval shadow`
    for bucket in (Bucket.WORKFLOWS, Bucket.ESCALATIONS, Bucket.WORKFLOW_DEFS):
        pub += [*r.kv_read(bucket), *r.kv_list(bucket)]
    sub += [s.all("partial")]  # `submit --stream`: the agents' partial output, live
    out.append(Identity(CONSOLE, tuple(pub), tuple(sub), responses=False))

    pub, sub = r.base(WEB_CONSOLE)
    pub += [*r.journal_append(JournalKind.DECISION), *r.read_stream(r.stream(Stream.JOURNAL)),
            *r.read_stream(r.stream(Stream.EVENTS)), *r.read_stream(r.stream(Stream.OUTCOMES)),
            "$SRV.>", f"{p}.agent.*.schema", *r.kv_write(Bucket.CLAIMS), *r.kv_list(Bucket.CLAIMS),
            "$JS.FC.>"]  # an ordered consumer's flow control, answered as it reads
    for bucket in (Bucket.WORKFLOWS, Bucket.ESCALATIONS, Bucket.WORKFLOW_DEFS):
        pub += [*r.kv_read(bucket), *r.kv_list(bucket)]
    out.append(Identity(WEB_CONSOLE, tuple(pub), tuple(sub), responses=False))

    pub, sub = r.base(A2A_GATEWAY)
    events = r.stream(Stream.A2A_EVENTS)
    pub += [*r.journal_append(JournalKind.SUBMIT), *r.journal_append(JournalKind.DECISION),
            *r.read_stream(r.stream(Stream.JOURNAL)), *r.read_stream(r.stream(Stream.OUTCOMES)),
            *r.kv_write(Bucket.A2A_TASKS), *r.kv_list(Bucket.A2A_TASKS),
            f"{p}.a2a.events.>", *r.read_stream(events), "$JS.FC.>"]
    for bucket in (Bucket.ESCALATIONS, Bucket.WORKFLOWS):
        pub += [*r.kv_read(bucket), *r.kv_list(bucket)]
    out.append(Identity(A2A_GATEWAY, tuple(pub), tuple(sub), responses=False))

    for role in sorted(set(roles)):
        name = agent_identity(role)
        pub, sub = r.base(name)
        tools = policy.allowed(role) if policy is not None else []
        pub += [*r.journal_append(f"{JournalKind.RESULT}.{role}"), s.dlq(DeadLetterKind.TASK),
                *r.durable(r.stream(Stream.TASKS), role),
                *r.kv_read(Bucket.TRUST), *(s.tool(t, role) for t in tools),
                # partial output for live watchers, and the cache of deterministic model calls
                # (reads of the bucket, writes of the role's own keys only)
                s.all("partial"), *r.kv_read(Bucket.MODEL_CACHE),
                f"$KV.{s.bucket(Bucket.MODEL_CACHE)}.{role}.>"]
        sub += [s.agent_schema(role)]  # its micro service's schema endpoint
        out.append(Identity(name, tuple(pub), tuple(sub)))
        # the role's shadow agent: copies in, its records out, tool calls (run dry by their
        # grants); no journal, no tasks, no partial output
        name = shadow_identity(role)
        pub, sub = r.base(name)
        pub += [s.shadow_result(role), s.dlq(DeadLetterKind.SHADOW),
                *r.durable(r.stream(Stream.SHADOW), shadow_durable(role)),
                *r.kv_read(Bucket.TRUST), *(s.tool(t, role) for t in tools),
                *r.kv_read(Bucket.SHADOWS), f"$KV.{s.bucket(Bucket.SHADOWS)}.{role}",
                *r.kv_read(Bucket.MODEL_CACHE), f"$KV.{s.bucket(Bucket.MODEL_CACHE)}.{role}.>"]
        out.append(Identity(name, tuple(pub), tuple(sub)))
    return out


def _quoted(items: Iterable[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def authorization(ids: list[Identity], public_key: Callable[[str], str]) -> str:
    """The ``authorization`` block of a nats-server config; ``public_key`` names each
    identity's nkey (``Credentials.public_key``)."""
    lines = ["authorization {", "  users = ["]
    for ident in ids:
        lines += [
            f"    # {ident.name}",
            "    {",
            f'      nkey: "{public_key(ident.name)}"',
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


CLUSTER_NAME = "switchyard"


def cluster_configs(
    auth: str, *, nodes: int, store_dir: Path, port: int = 4222, cluster_port: int = 6222,
    host: str = "127.0.0.1", sync_always: bool = True, route_user: str = "",
    route_password: str = "", monitor_port: int = 0,
) -> dict[str, str]:
    """The configs of a JetStream cluster of ``nodes`` servers, by file name (``node-1.conf``
    …): node ``i`` is ``server_name: node-i``, serves clients on ``port + i - 1`` and routes on
    ``cluster_port + i - 1``, at ``host`` (a template: ``{i}`` becomes the node's number, as in
    ``nats-{i}.nats`` for one container or pod per node), keeps its store in
    ``store_dir/node-i`` and carries the same ``auth`` (the ``authorization`` block), so every
    node refuses what one would. Routes are open unless ``route_user``/``route_password`` are
    given (then a node accepts routes only with them, and dials the others with them). With
    ``monitor_port``, node ``i`` serves monitoring (``/healthz``, ``/jsz``) on ``monitor_port + i - 1``.

    A cluster of two loses its JetStream quorum when either node stops, and one is no cluster:
    both are refused (``ConfigError``)."""
    if nodes < 3:
        raise ConfigError(f"a JetStream cluster of {nodes} node(s) has no fault tolerance (its "
                         "quorum needs every node of two, and one is no cluster): use 3 or more")
    def at(i: int) -> str:
        return host.replace("{i}", str(i))

    login = f"{route_user}:{route_password}@" if route_user else ""
    routes = ", ".join(f'"nats-route://{login}{at(i)}:{cluster_port + i - 1}"'
                       for i in range(1, nodes + 1))
    route_auth = (f'  authorization {{ user: "{route_user}", password: "{route_password}" }}\n'
                  if route_user else "")
    sync = "  sync_interval: always\n" if sync_always else ""
    return {
        f"node-{i}.conf": (
            f"server_name: node-{i}\n"
            f"listen: {at(i)}:{port + i - 1}\n"
            + (f"http: {at(i)}:{monitor_port + i - 1}\n" if monitor_port else "")
            + f"jetstream {{\n  store_dir: \"{store_dir / f'node-{i}'}\"\n{sync}}}\n"
            f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: {at(i)}:{cluster_port + i - 1}\n"
            f"{route_auth}  routes: [{routes}]\n}}\n" + auth)
        for i in range(1, nodes + 1)
    }
