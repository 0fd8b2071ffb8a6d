"""Grants: capability tokens the supervisor signs for each task (Ed25519, NATS nkeys).

A token is ``<base64url(JSON grant)>.<base64url(signature)>``. Only the supervisor holds the seed;
tool hosts and agents hold the supervisor's public key (``A…``) and verify. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from datetime import UTC, datetime
from functools import lru_cache

import msgspec
import nacl.exceptions
import nacl.signing
import nkeys

from switchyard.protocol.errors import (
    GrantExpiredError,
    GrantInvalidError,
    GrantMissingError,
    GrantScopeError,
    LimitExceededError,
    ToolNotGrantedError,
)
from switchyard.protocol.expressions import holds

MAX_TOKEN_BYTES = 8 * 1024


class Grant(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    workflow_id: str
    task_id: str
    role: str
    tools: list[str]
    budget: int
    issued_at: float
    expires_at: float
    issuer: str
    limits: dict[str, dict[str, float]] = {}  # tool -> argument -> highest value allowed
    approvals: dict[str, str] = {}  # tool -> JMESPath over {"args": …}: calls that need a person
    approved: dict[str, str] = {}  # call digest -> who approved that exact call
    declined: list[str] = []  # call digests a person rejected
    # a shadow agent's copy of a task: the tool host runs its calls dry (reads run, effects are
    # only simulated, nothing is held for approval, nothing is spent or recorded as done)
    dry: bool = False


_grant_decoder = msgspec.json.Decoder(Grant)
_canonical = msgspec.json.Encoder(order="sorted")


def call_digest(tool: str, args: dict[str, object]) -> str:
    """Names one exact call (tool and arguments), for approvals."""
    return hashlib.sha256(tool.encode() + b"\x00" + _canonical.encode(args)).hexdigest()[:32]


def new_seed() -> bytes:
    """A fresh nkey seed (``SA…``) for a supervisor."""
    return bytes(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_ACCOUNT))


def public_key(seed: bytes) -> str:
    return bytes(nkeys.from_seed(bytearray(seed)).public_key).decode()


class Signer:
    """Holds the supervisor's key pair and signs grants."""

    def __init__(self, seed: bytes) -> None:
        self._keys = nkeys.from_seed(bytearray(seed))
        self.public_key = bytes(self._keys.public_key).decode()

    def mint(self, grant: Grant) -> str:
        if grant.issuer != self.public_key:
            grant = msgspec.structs.replace(grant, issuer=self.public_key)
        body = msgspec.json.encode(grant)
        signature = self._keys.sign(body)
        return f"{_b64(body)}.{_b64(signature)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@lru_cache(maxsize=64)
def _verify_key(public: str) -> nacl.signing.VerifyKey:
    try:
        raw = base64.b32decode(public.encode() + b"=" * (-len(public) % 8))
    except (binascii.Error, ValueError):
        raise GrantInvalidError("issuer is not an nkey public key") from None
    if len(raw) != 35 or not nkeys.valid_public_prefix_byte(raw[0]):
        raise GrantInvalidError("issuer is not an nkey public key")
    if nkeys.crc16_checksum(raw[:-2]) != raw[-2:]:
        raise GrantInvalidError("issuer key checksum does not match")
    return nacl.signing.VerifyKey(raw[1:-2])


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def verify(token: str, trusted: frozenset[str] | set[str], now: float) -> Grant:
    """Return the grant in ``token`` if a trusted key signed it and it has not expired.

    Raises ``GrantInvalidError`` (missing, malformed, forged, untrusted issuer) or
    ``GrantExpiredError``.
    """
    if not token:
        raise GrantMissingError()
    if len(token) > MAX_TOKEN_BYTES:
        raise GrantInvalidError(f"token of {len(token)} bytes exceeds {MAX_TOKEN_BYTES} bytes")
    body_text, _, sig_text = token.partition(".")
    try:
        body, signature = _unb64(body_text), _unb64(sig_text)
        grant = _grant_decoder.decode(body)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise GrantInvalidError("token is malformed") from None
    if grant.issuer not in trusted:
        raise GrantInvalidError(f"issuer {grant.issuer[:12]}… is not trusted")
    try:
        _verify_key(grant.issuer).verify(body, signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        raise GrantInvalidError("signature does not match (forged or altered)") from None
    if now >= grant.expires_at:
        raise GrantExpiredError(grant.task_id, _iso(grant.expires_at), _iso(now))
    return grant


def check_tool(grant: Grant, tool: str, workflow_id: str, task_id: str) -> None:
    """Raise unless ``grant`` lets task ``task_id`` of ``workflow_id`` call ``tool``."""
    if grant.workflow_id != workflow_id:
        raise GrantScopeError("workflow", grant.workflow_id, workflow_id)
    if grant.task_id != task_id:
        raise GrantScopeError("task", grant.task_id, task_id)
    if tool not in grant.tools:
        raise ToolNotGrantedError(tool, grant.tools)


def check_limits(grant: Grant, tool: str, args: dict[str, object]) -> None:
    """Raise ``LimitExceededError`` if an argument the grant limits is above its limit, or is not
    a number at all (``"50"``, ``true``): a limit can only be checked against a number."""
    for argument, limit in grant.limits.get(tool, {}).items():
        value = args.get(argument)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise LimitExceededError(tool, argument, value, limit, not_a_number=True)
        if value > limit:
            raise LimitExceededError(tool, argument, value, limit)


def needs_approval(grant: Grant, tool: str, args: dict[str, object]) -> bool:
    """Whether the grant's approval rule for ``tool`` holds for these arguments."""
    rule = grant.approvals.get(tool)
    return rule is not None and rule != "" and holds(rule, {"args": args})
