"""Credentials for a secured bus: one nkey seed per identity, the connect options that use one,
and provisioning as the admin (the others may only use what it creates)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import nkeys
from nats.js.client import JetStreamContext

from switchyard.protocol.bus.provision import TRAIL_MAX_AGE_S
from switchyard.protocol.bus.provision import provision as provision_layout
from switchyard.protocol.subjects import Subjects
from switchyard.supervisor.authz import inbox_prefix


def connect_options(seed_file: Path) -> dict[str, Any]:
    """``nats.connect`` options for the identity whose nkey seed is in ``seed_file`` (named
    ``<identity>.nk``): its key, and replies under its own inbox prefix, the only one the bus lets
    it subscribe to."""
    return {"nkeys_seed": str(seed_file), "inbox_prefix": inbox_prefix(seed_file.stem)}


async def provision(
    js: JetStreamContext, s: Subjects, *, replicas: int = 1, trail_max_age: float = TRAIL_MAX_AGE_S,
) -> None:
    """As the admin: the streams and buckets the other identities may only use."""
    await provision_layout(js, s, replicas=replicas, trail_max_age=trail_max_age)


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

    def route_password(self) -> str:
        """The password a cluster's nodes route with (``route.secret``), created once."""
        path = self.dir / "route.secret"
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def public_key(self, identity: str) -> str:
        seed = bytearray(self.seed_file(identity).read_bytes().strip())
        return bytes(nkeys.from_seed(seed).public_key).decode()


# rendering --------------------------------------------------------------------------------------
