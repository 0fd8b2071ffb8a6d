"""The JetStream streams and buckets of one deployment.

``stream_configs`` is pure; ``ensure_streams`` and ``open_bucket`` apply it through a JetStream
context they are given (they open no connection of their own), so every component can provision
what it needs at start.
"""

from __future__ import annotations

from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from switchyard.protocol.publish import Publisher
from switchyard.protocol.subjects import Subjects

DAY = 24 * 3600.0
TRUST_KEY = "supervisor"  # the supervisor's public key, in bucket <prefix>_trust


def stream_configs(s: Subjects, *, replicas: int = 1) -> list[StreamConfig]:
    def cfg(name: str, subjects: list[str], **kw: object) -> StreamConfig:
        return StreamConfig(
            name=s.stream(name),
            subjects=subjects,
            storage=StorageType.FILE,
            num_replicas=replicas,
            **kw,  # type: ignore[arg-type]
        )

    return [
        cfg("workflows", [s.submit], retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=120.0),
        cfg("outcomes", [s.all("workflow.outcome")], max_msgs_per_subject=1, max_age=7 * DAY),
        cfg("tasks", [s.all("task")], retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=120.0),
        cfg("results", [s.all("result")], max_age=DAY, duplicate_window=120.0),
        cfg("human", [s.human_queue, f"{s.human_queue}.*", s.human_decision],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=120.0),
        cfg("events", [s.all("event")], max_age=30 * DAY, deny_delete=True, deny_purge=True,
            discard=DiscardPolicy.OLD),
        cfg("dlq", [s.all("dlq")], max_age=30 * DAY),
        # the server's word that a task was delivered max_deliver times and never acknowledged,
        # kept until the supervisor has dead-lettered that task (core advisories are not kept)
        cfg("advisories", [max_deliveries_subject(s)], retention=RetentionPolicy.WORK_QUEUE,
            max_age=7 * DAY),
    ]


def max_deliveries_subject(s: Subjects) -> str:
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{s.stream('tasks')}.*"


async def ensure_streams(js: JetStreamContext, s: Subjects, *, replicas: int = 1) -> None:
    """Create the streams if missing; leave existing ones as their operator set them."""
    for config in stream_configs(s, replicas=replicas):
        try:
            await js.stream_info(config.name or "")
        except Exception:  # NotFoundError, or a server that lost it
            try:
                await js.add_stream(config)
            except BadRequestError as exc:
                if exc.err_code != 10058:  # stream name already in use (a racing peer)
                    raise


async def open_bucket(
    js: JetStreamContext, bucket: str, *, replicas: int = 1, history: int = 1,
) -> KeyValue:
    """The bucket, created if missing. Entries written with a TTL (``kv_write``) leave a delete
    marker when they expire, so watchers see them go."""
    try:
        return await js.key_value(bucket)
    except Exception:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=bucket, history=history, storage=StorageType.FILE, replicas=replicas,
                limit_marker_ttl=MARKER_TTL_S,
            )
        )


MARKER_TTL_S = 60.0
WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's "not the revision you named"


async def kv_write(
    js: JetStreamContext | Publisher, bucket: str, key: str, value: bytes, *,
    last: int | None = None, ttl: float | None = None,
) -> int:
    """Write one KV entry, optionally only over revision ``last`` (0: only if absent) and with a
    time to live, after which the server removes it (per-message TTL, NATS 2.11+). Returns the
    new revision; raises ``BadRequestError`` with a ``WRONG_LAST_SEQUENCE`` code on a conflict."""
    headers = {"Nats-Expected-Last-Subject-Sequence": str(last)} if last is not None else None
    if isinstance(js, Publisher):
        return (await js.publish(f"$KV.{bucket}.{key}", value, headers, ttl=ttl)).seq
    ack = await js.publish(f"$KV.{bucket}.{key}", value, headers=headers,
                           msg_ttl=ttl if ttl else None)
    return ack.seq
