"""Credentials for a secured bus: one nkey seed per identity, the connect options that use one,
and a connection that says at once when the server refuses who it is."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import Any

import nkeys
import structlog
from nats.aio.client import Client

from switchyard.protocol.errors import ConfigError
from switchyard.supervisor.authz import inbox_prefix

log = structlog.get_logger("switchyard.credentials")


def connect_options(seed_file: Path) -> dict[str, Any]:
    """``nats.connect`` options for the identity whose nkey seed is in ``seed_file`` (named
    ``<identity>.nk``): its key, and replies under its own inbox prefix, the only one the bus lets
    it subscribe to."""
    return {"nkeys_seed": str(seed_file), "inbox_prefix": inbox_prefix(seed_file.stem)}


async def connect_or_refuse(servers: list[str], options: dict[str, Any], *,
                            timeout: float = 30.0) -> Client:
    """A connection for a command a person runs; a server that refuses who we are (no key, a
    key it does not know) ends it at once with what to do, instead of nats.py's reconnect loop
    printing the refusal for a minute or two."""
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    nc = Client()

    async def on_error(exc: Exception) -> None:
        if "uthorization" in str(exc) and not refused.done():
            refused.set_result(str(exc))
        elif nc.is_connected:  # once connected, what nats.py reports goes to the log
            log.warning("nats.error", error=str(exc))

    connecting = asyncio.ensure_future(nc.connect(servers, error_cb=on_error, **options))
    either: set[asyncio.Future[Any]] = {connecting, refused}
    try:
        done, _ = await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        connecting.cancel()
        await nc.close()
        raise
    if connecting in done:
        refused.cancel()
        connecting.result()
        return nc
    connecting.cancel()
    await asyncio.wait({connecting})  # until it has stopped; a cancellation of ours still raises
    await nc.close()  # the socket nats.py keeps open after a refused connect
    if refused not in done:
        raise ConfigError(f"no connection to {', '.join(servers)} within {timeout:.0f} s")
    who = options.get("inbox_prefix", "").removeprefix("_INBOX.") or "no key"
    raise ConfigError(
        f"the NATS server at {', '.join(servers)} refused this connection ({who}): "
        f"{refused.result()}. On a secured bus give this process its key: "
        "SWITCHYARD_NKEY_FILE=…/console.nk (admin.nk for `workflow put` and `provision`)")


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


def replace_private(path: Path, text: str) -> None:
    """Write ``text`` as ``path``, readable by its owner alone from the first byte, replacing
    what was there in one rename (a reader sees the old file or the new, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)
