"""Which grant issuers to trust: given in config, or read from the deployment's trust bucket.

The supervisor writes its public key to KV bucket ``<prefix>_trust`` (key ``supervisor``) when it
starts, so an agent or tool host started anywhere on the bus can verify grants without extra
configuration. A key given in config always wins.
"""

from __future__ import annotations

import asyncio

from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from switchyard.protocol.bus.transient import transient
from switchyard.protocol.errors import ConfigError
from switchyard.protocol.subjects import TRUST_KEY, Subjects


async def resolve_trusted_keys(
    js: JetStreamContext,
    subjects: Subjects,
    configured: frozenset[str],
    *,
    wait: float = 30.0,
) -> frozenset[str]:
    """Return ``configured`` if set; else wait up to ``wait`` s for the supervisor's key."""
    if configured:
        return configured
    try:
        async with asyncio.timeout(wait):
            while True:
                try:
                    kv = await js.key_value(subjects.bucket("trust"))
                    entry = await kv.get(TRUST_KEY)
                    if entry.value:
                        return frozenset(entry.value.decode().split(","))
                except (BucketNotFoundError, KeyNotFoundError, NotFoundError):
                    pass
                except Exception as exc:  # a cluster electing the bucket's leader: not yet
                    if not transient(exc):
                        raise
                await asyncio.sleep(0.2)  # polling the bucket until a supervisor has started
    except TimeoutError:
        raise ConfigError(
            f"no trusted grant issuer: none configured and no supervisor key appeared in "
            f"bucket {subjects.bucket('trust')!r} within {wait:g} s"
        ) from None
