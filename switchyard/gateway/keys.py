"""Who may call the gateway, and which workflows: a keys file, one ``name:sha256:workflows`` per
line (``workflows`` comma-separated, or ``*`` for every exposed one), written by ``switchyard
a2a add-key``, which prints the key once. Only its SHA-256 is kept."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from switchyard.credentials import replace_private
from switchyard.protocol.errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True)
class Caller:
    name: str
    workflows: tuple[str, ...]  # ("*",): every exposed workflow

    def may_call(self, workflow: str) -> bool:
        return "*" in self.workflows or workflow in self.workflows


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Keys:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, tuple[str, Caller]]:
        """name -> (the key's SHA-256, the caller)."""
        if not self.path.exists():
            return {}
        found: dict[str, tuple[str, Caller]] = {}
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(":")
            if len(parts) != 3 or not NAME.fullmatch(parts[0]) or not re.fullmatch(
                    r"[0-9a-f]{64}", parts[1]):
                raise ConfigError(f"{self.path}:{n}: not `name:sha256:workflows` (write it with "
                                  "`switchyard a2a add-key NAME --workflow W`)")
            flows = tuple(w.strip() for w in parts[2].split(",") if w.strip())
            found[parts[0]] = (parts[1], Caller(parts[0], flows))
        return found

    def caller(self, key: str) -> Caller | None:
        """The caller a presented key names, if any (compared in constant time)."""
        want = digest(key)
        match = None
        for stored, caller in self.load().values():
            if hmac.compare_digest(stored, want):
                match = caller
        return match

    def add(self, name: str, workflows: list[str]) -> str:
        """A new key for ``name`` (replacing any it had); returns the key, shown only now."""
        if not NAME.fullmatch(name):
            raise ConfigError(f"{name!r} is not a caller name (letters, digits, . _ @ -; at "
                              "most 64)")
        if not workflows:
            raise ConfigError("name the workflows it may call (--workflow W, or '*' for all)")
        key = "sya2a_" + secrets.token_urlsafe(32)
        found = self.load()
        found[name] = (digest(key), Caller(name, tuple(workflows)))
        replace_private(self.path, "".join(f"{n}:{h}:{','.join(c.workflows)}\n"
                                           for n, (h, c) in sorted(found.items())))
        return key
