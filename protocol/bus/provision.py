"""Provisioning: the JetStream streams and buckets of one deployment, created if missing.

Everything acts through a JetStream context it is given (no connection of its own), so every
component provisions the whole layout at start (``provision``), at the replication factor it is
configured with (``replicas``: 3 on a three-node cluster). Names come from
``switchyard.protocol.subjects`` (``Stream``, ``Bucket``); the generated NATS authorization uses
the same names.

Reads after writes on a replicated stream: a direct get (``allow_direct``) may be answered by any
replica, and a follower may not yet have applied a write the leader has acknowledged. So direct
gets are allowed only on single-replica streams; at R3 the journal is read through the stream
leader (``$JS.API.STREAM.MSG.GET``, see ``Journal``), and the buckets are made without direct get
(nats.py then reads them through the leader too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError
from nats.js.kv import KeyValue

from switchyard.protocol.bus.publisher import Publisher
from switchyard.protocol.bus.transient import transient
from switchyard.protocol.errors import ConfigError
from switchyard.protocol.headers import EXPECTED_LAST_SUBJECT_SEQ
from switchyard.protocol.subjects import OLD_STREAMS, Bucket, Stream, Subjects

DAY = 24 * 3600.0
SHADOW_REGISTRATION_MAX_AGE_S = 3600.0  # a stale one is ignored long before (supervisor.shadows)
MARKER_TTL_S = 60.0
WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's "not the revision you named"
STREAM_NAME_IN_USE = 10058


TRAIL_MAX_AGE_S = 30 * DAY


def stream_configs(
    s: Subjects, *, replicas: int = 1, trail_max_age: float = TRAIL_MAX_AGE_S,
) -> list[StreamConfig]:
    """The streams of a deployment. ``trail_max_age`` is how long journals, tool-call chains and
    dead letters are kept (what bounds the server's store and memory); outcomes are kept at most
    7 days."""
    def cfg(name: Stream, subjects: list[str], **kw: object) -> StreamConfig:
        return StreamConfig(
            name=s.stream(name),
            subjects=subjects,
            storage=StorageType.FILE,
            num_replicas=replicas,
            **kw,  # type: ignore[arg-type]
        )

    return [
        # every input of every workflow: kept as the audit trail, so never deleted nor purged;
        # direct gets read a workflow's records without a consumer, on one replica only (a
        # follower's answer may lag what the leader acknowledged: see the module's docstring)
        cfg(Stream.JOURNAL, [s.all("journal")], max_age=trail_max_age, deny_delete=True,
            deny_purge=True, discard=DiscardPolicy.OLD, allow_direct=replicas == 1,
            duplicate_window=min(120.0, trail_max_age)),
        cfg(Stream.OUTCOMES, [s.all("workflow.outcome")], max_msgs_per_subject=1,
            max_age=min(7 * DAY, trail_max_age)),
        cfg(Stream.TASKS, [s.all("task")], retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=120.0),
        cfg(Stream.HUMAN, [s.human_queue, f"{s.human_queue}.*"],
            retention=RetentionPolicy.WORK_QUEUE, duplicate_window=120.0),
        cfg(Stream.EVENTS, [s.all("event"), s.unattributed], max_age=trail_max_age, deny_delete=True,
            deny_purge=True, discard=DiscardPolicy.OLD),
        cfg(Stream.DLQ, [s.all("dlq")], max_age=trail_max_age),
        # the server's word that a task was delivered max_deliver times and never acknowledged,
        # kept until the supervisor has dead-lettered that task (core advisories are not kept)
        cfg(Stream.ADVISORIES, [s.max_deliveries], retention=RetentionPolicy.WORK_QUEUE,
            max_age=7 * DAY),
        # the A2A gateway's task events: what a replica's subscriber replays and follows
        cfg(Stream.A2A_EVENTS, [s.all("a2a.events")], max_age=min(7 * DAY, trail_max_age)),
        # shadow agents: the copies of their roles' tasks and their records of them, a week
        cfg(Stream.SHADOW, [s.all("shadow")], max_age=min(7 * DAY, trail_max_age),
            duplicate_window=min(120.0, trail_max_age)),
    ]


async def check_layout(js: JetStreamContext, s: Subjects) -> None:
    """Refuse, with what to do, a server that holds the protocol 1 layout (submissions and
    results in streams of their own, state in KV): its runs cannot continue under the journal."""
    found = []
    for name in OLD_STREAMS:
        try:
            await js.stream_info(s.stream(name))
        except NotFoundError:
            continue
        found.append(s.stream(name))
    if found:
        raise ConfigError(
            f"this NATS server holds Switchyard's protocol 1 layout (streams {', '.join(found)}), "
            "from before the journal. Its runs cannot be continued by this version. Either let a "
            "v1 supervisor finish them, or start on a new data directory "
            "(`SWITCHYARD_DATA_DIR=NEW switchyard up`); to discard the old state, delete those "
            f"streams and the {s.bucket('workflows')} bucket (`nats stream rm`, `nats kv rm`).")


async def ensure_streams(
    js: JetStreamContext, s: Subjects, *, replicas: int = 1, trail_max_age: float = TRAIL_MAX_AGE_S,
) -> None:
    """Create the streams if missing; leave existing ones as their operator set them. A server
    with the old layout is refused (``check_layout``)."""
    await check_layout(js, s)
    for config in stream_configs(s, replicas=replicas, trail_max_age=trail_max_age):
        try:
            info = await js.stream_info(config.name or "")
        except Exception:  # NotFoundError, or a server that lost it
            try:
                await js.add_stream(config)
            except APIError as exc:
                if exc.err_code == STREAM_NAME_IN_USE:  # a racing peer made it first
                    continue
                if transient(exc):  # no meta leader at the moment: the caller may ride it out
                    raise
                if replicas > 1:
                    raise ConfigError(
                        f"cannot create {config.name} at {replicas} replicas: {exc.description}. "
                        "SWITCHYARD_REPLICAS may not exceed the nodes of the NATS cluster (1 on a "
                        "single server)") from None
                raise
            continue
        have = list(info.config.subjects or [])
        missing = [x for x in config.subjects or [] if x not in have]
        if missing:  # a stream made by an older version: add the subjects it lacks, only those
            info.config.subjects = have + missing
            await js.update_stream(info.config)


def bucket_max_age(bucket: Bucket, trail_max_age: float) -> float | None:
    """How long an entry is kept after its last write, for the buckets whose entries would
    otherwise grow without end: the A2A gateway's tasks (as the outcomes, a week at most), and
    the shadow agents' registrations (refreshed every few seconds while a shadow runs)."""
    if bucket is Bucket.SHADOWS:
        return SHADOW_REGISTRATION_MAX_AGE_S
    return min(7 * DAY, trail_max_age) if bucket is Bucket.A2A_TASKS else None


def bucket_history(bucket: Bucket) -> int:
    """Revisions kept per key: workflow definitions keep a few, the rest only the latest."""
    return 5 if bucket is Bucket.WORKFLOW_DEFS else 1


async def provision(
    js: JetStreamContext, s: Subjects, *, replicas: int = 1,
    trail_max_age: float = TRAIL_MAX_AGE_S,
) -> None:
    """The whole layout, every stream and bucket, created at ``replicas`` where missing; what
    exists is left as its operator set it (its replicas too)."""
    await ensure_streams(js, s, replicas=replicas, trail_max_age=trail_max_age)
    for bucket in Bucket:
        await open_bucket(js, s.bucket(bucket), replicas=replicas, history=bucket_history(bucket),
                          max_age=bucket_max_age(bucket, trail_max_age))
    if replicas > 1:
        await await_leaders(js, layout_names(s))


async def await_leaders(js: JetStreamContext, names: list[str], *, timeout: float = 30.0) -> None:
    """Until every stream in ``names`` has a leader: a replicated stream just created elects
    one first, and until then a publish to it finds no one to answer ("no response from
    stream"), which a component's first write at start would die of."""
    deadline = time.monotonic() + timeout
    waiting = list(names)
    while waiting:
        name = waiting[0]
        try:
            info = await js.stream_info(name)
            if info.cluster is None or info.cluster.leader:
                waiting.pop(0)
                continue
        except NotFoundError:
            raise
        except Exception:  # no leader yet to answer the request
            pass
        if time.monotonic() > deadline:
            raise ConfigError(f"streams {', '.join(waiting)} have no leader after {timeout:.0f} s: "
                              "is a quorum of the cluster's nodes up?")
        await asyncio.sleep(0.1)  # nothing announces an election's result to a client


def layout_names(s: Subjects) -> list[str]:
    """Every stream of the layout, the buckets' own streams (``KV_…``) included."""
    return [s.stream(x) for x in Stream] + [f"KV_{s.bucket(b)}" for b in Bucket]


async def ready_layout(js: JetStreamContext, s: Subjects, *, provisions: bool, replicas: int = 1,
                       trail_max_age: float = TRAIL_MAX_AGE_S) -> None:
    """The layout there before a process uses it: made where this process may (an open bus),
    else waited for until the admin has made it (a secured bus: nobody else may create)."""
    if provisions:
        await provision(js, s, replicas=replicas, trail_max_age=trail_max_age)
    else:
        await await_layout(js, s)


async def await_layout(
    js: JetStreamContext, s: Subjects, *, timeout: float = 300.0, poll: float = 1.0,
    waiting: Callable[[list[str]], None] | None = None,
) -> None:
    """For an identity that may not create them (on a secured bus only the admin may): wait until
    the streams and buckets exist, telling ``waiting`` what is still missing (every few polls),
    and after ``timeout`` give up saying who must create them. Processes may so start in any
    order, the admin's ``switchyard provision`` among them."""
    await check_layout(js, s)
    deadline = time.monotonic() + timeout
    for attempt in range(1_000_000):
        missing = []
        for name in layout_names(s):
            try:
                await js.stream_info(name)
            except NotFoundError:
                missing.append(name)
            except Exception:  # a server still starting, a leader being elected: not there yet
                missing.append(name)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise ConfigError(
                f"the streams and buckets {', '.join(missing)} do not exist and this identity may "
                "not create them: run `switchyard provision` as the admin "
                "(SWITCHYARD_NKEY_FILE=…/admin.nk)")
        if waiting is not None and attempt % 10 == 0:
            waiting(missing)
        await asyncio.sleep(poll)  # nothing announces a stream's creation to a client


async def open_bucket(
    js: JetStreamContext, bucket: str, *, replicas: int = 1, history: int = 1,
    max_age: float | None = None,
) -> KeyValue:
    """The bucket, created if missing. Entries written with a TTL (``kv_write``) leave a delete
    marker when they expire, so watchers see them go. Made without direct get, so every read is
    the leader's (the tool ledger's claim-then-read must see the claim it lost to)."""
    try:
        return await js.key_value(bucket)
    except Exception:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=bucket, history=history, storage=StorageType.FILE, replicas=replicas,
                limit_marker_ttl=MARKER_TTL_S, direct=False, ttl=max_age,
            )
        )


async def kv_write(
    js: JetStreamContext | Publisher, bucket: str, key: str, value: bytes, *,
    last: int | None = None, ttl: float | None = None,
) -> int:
    """Write one KV entry, optionally only over revision ``last`` (0: only if absent) and with a
    time to live, after which the server removes it (per-message TTL, NATS 2.11+). Returns the
    new revision; raises ``BadRequestError`` with a ``WRONG_LAST_SEQUENCE`` code on a conflict."""
    headers = {EXPECTED_LAST_SUBJECT_SEQ: str(last)} if last is not None else None
    if isinstance(js, Publisher):
        return (await js.publish(f"$KV.{bucket}.{key}", value, headers, ttl=ttl)).seq
    ack = await js.publish(f"$KV.{bucket}.{key}", value, headers=headers,
                           msg_ttl=ttl if ttl else None)
    return ack.seq


async def unserved_subjects(js: JetStreamContext, s: Subjects) -> dict[str, int]:
    """Task subjects holding messages that no consumer of the tasks stream takes, with their
    counts: in a work queue those wait until someone serves the role, which may be never."""
    stream = s.stream(Stream.TASKS)
    info = await js.stream_info(stream, subjects_filter=s.all("task"))
    waiting = info.state.subjects or {}
    if not waiting:
        return {}
    filters: list[str] = []
    for consumer in await js.consumers_info(stream):
        cfg = consumer.config
        filters += [f for f in (cfg.filter_subject, *(cfg.filter_subjects or [])) if f]
        if not cfg.filter_subject and not cfg.filter_subjects:
            return {}  # a consumer of everything serves every subject
    return {subject: n for subject, n in sorted(waiting.items())
            if not any(subject_matches(f, subject) for f in filters)}


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` the rest (one or more tokens)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)
