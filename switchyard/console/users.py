"""Reviewers who may sign in to the console: a users file, one ``name:hash`` per line, each hash
scrypt's (``scrypt$n$r$p$salt$key``, base64), written by ``switchyard console add-user``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from pathlib import Path

from switchyard.credentials import replace_private
from switchyard.protocol.errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
N, R, P = 2**14, 8, 1
# checked against when the name is unknown, so a wrong name costs what a wrong password does
_NOBODY = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    return f"scrypt${N}${R}${P}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(key)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(want))
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


class Users:
    """The users file, read at every sign-in (an added reviewer needs no restart)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        users: dict[str, str] = {}
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, stored = line.partition(":")
            if not sep or not NAME.fullmatch(name) or not stored.startswith("scrypt$"):
                raise ConfigError(f"{self.path}:{n}: not `name:scrypt$…` (write it with "
                                  "`switchyard console add-user NAME`)")
            users[name] = stored
        return users

    def check(self, name: str, password: str) -> bool:
        stored = self.load().get(name)
        ok = verify_password(password, stored or _NOBODY)
        return ok and stored is not None

    def add(self, name: str, password: str) -> None:
        if not NAME.fullmatch(name):
            raise ConfigError(f"{name!r} is not a reviewer name (letters, digits, . _ @ -; "
                              "at most 64)")
        if len(password) < 8:
            raise ConfigError("a password needs at least 8 characters")
        users = self.load()
        users[name] = hash_password(password)
        replace_private(self.path, "".join(f"{n}:{h}\n" for n, h in sorted(users.items())))
