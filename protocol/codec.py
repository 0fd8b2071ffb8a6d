"""The only place messages become bytes and bytes become messages.

Limits are explicit: ``max_bytes`` (default 256 KiB, below NATS's 1 MiB ``max_payload``) and
``max_depth`` (default 32) for nested payloads. Every failure is a ``ProtocolError`` with a
sentence, never a crash.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from switchyard.protocol.errors import DecodeError, MessageTooLargeError, UnsupportedVersionError
from switchyard.protocol.messages import PROTOCOL_VERSION

DEFAULT_MAX_BYTES = 256 * 1024
DEFAULT_MAX_DEPTH = 32
SCAN_ABOVE = 500  # bracket count above which the raw bytes are scanned for depth first
SUPPORTED_MAJOR = PROTOCOL_VERSION.split(".", 1)[0]

M = TypeVar("M", bound=msgspec.Struct)

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


class _Envelope(msgspec.Struct):
    protocol: str = ""


_envelope_decoder = msgspec.json.Decoder(_Envelope)


def encode(message: msgspec.Struct, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    data = _encoder.encode(message)
    if len(data) > max_bytes:
        raise MessageTooLargeError(len(data), max_bytes, type(message).__name__)
    return data


def encode_json(value: Any) -> bytes:
    """Encode a plain JSON value (for payloads that are not protocol messages)."""
    return _encoder.encode(value)


def check_version(version: str) -> None:
    major = version.split(".", 1)[0]
    if major != SUPPORTED_MAJOR:
        raise UnsupportedVersionError(version, SUPPORTED_MAJOR)


def decode(
    data: bytes,
    kind: type[M],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> M:
    """Decode ``data`` as ``kind``; raise ``ProtocolError`` on any problem."""
    if len(data) > max_bytes:
        raise MessageTooLargeError(len(data), max_bytes, kind.__name__)
    # Far more brackets than any sane message nests: look before parsing, so the parser never
    # recurses that deep (msgspec's own guard is a RecursionError, about 1000 levels down)
    if data.count(b"[") + data.count(b"{") > SCAN_ABOVE and nests_deeper(data, max_depth):
        raise DecodeError(kind.__name__, f"payload nested deeper than {max_depth} levels")
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        message: M = decoder.decode(data)
    except msgspec.DecodeError as exc:
        # Tell an unknown version apart from a schema mismatch: a v2 message may not fit v1.
        _raise_if_unknown_version(data)
        raise DecodeError(kind.__name__, str(exc)) from None
    except RecursionError:  # msgspec's own guard, about 1000 levels down: far past ours
        raise DecodeError(kind.__name__, f"payload nested deeper than {max_depth} levels") from None
    check_version(getattr(message, "protocol", PROTOCOL_VERSION))
    # Nesting can only exceed the limit if there are more brackets than the limit (C-speed count).
    brackets = data.count(b"{") + data.count(b"[")
    if brackets > max_depth and _deeper_than(msgspec.structs.astuple(message), max_depth):
        raise DecodeError(kind.__name__, f"payload nested deeper than {max_depth} levels")
    return message


def nests_deeper(data: bytes, limit: int) -> bool:
    """Whether the raw JSON opens more than ``limit`` + 1 containers at once (strings skipped);
    stops as soon as it does. The message object itself is the first level."""
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit + 1:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def _raise_if_unknown_version(data: bytes) -> None:
    try:
        envelope = _envelope_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return
    if envelope.protocol:
        check_version(envelope.protocol)


def _deeper_than(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, msgspec.Struct):
            stack.append((msgspec.structs.astuple(item), depth))
    return False
