"""Opaque tokens the runtime hands to clients: list cursors and sealed request state.

Pure functions over a key, no I/O. The cursor key is a secret kept in the
journal, so cursors survive a restart; the request-state key is derived from
it with `state_key`. Both kinds of token are bound to their owner and refused
if altered in any way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import struct
from collections.abc import Mapping
from typing import Any, cast

from mcp_tasks._exceptions import InvalidCursorError
from mcp_tasks._model import OwnerId


def state_key(cursor_secret: bytes) -> bytes:
    """The key `seal` and `unseal` use, derived from the journal's cursor secret."""
    return hmac.new(cursor_secret, b"request-state", hashlib.sha256).digest()


def seal(
    key: bytes, owner: OwnerId, payload: Mapping[str, Any], expires_at: float
) -> str:
    """An opaque, integrity-protected token carrying ``payload`` for ``owner``."""
    body = json.dumps(
        {
            "o": owner,
            "e": expires_at,
            "n": secrets.token_hex(4),
            "p": payload,
        },
        separators=(",", ":"),
    ).encode()
    mac = hmac.new(key, body, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")


def unseal(key: bytes, owner: OwnerId, token: str, now: float) -> dict[str, Any] | None:
    """The payload of a `seal` token, or None if forged, altered, expired or not ``owner``'s."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        return None
    mac, body = raw[:16], raw[16:]
    expected = hmac.new(key, body, hashlib.sha256).digest()[:16]
    if len(mac) != 16 or not hmac.compare_digest(mac, expected):
        return None
    data = json.loads(body)
    if data.get("o") != owner or float(data.get("e", 0)) < now:
        return None
    payload = data.get("p")
    return cast("dict[str, Any]", payload) if isinstance(payload, dict) else None


def _cursor_mac(secret: bytes, owner: OwnerId, packed: bytes) -> bytes:
    message = owner.encode() + b"\0" + packed
    return hmac.new(secret, message, hashlib.sha256).digest()[:12]


def encode_cursor(secret: bytes, owner: OwnerId, seq: int) -> str:
    """A list cursor for ``owner`` that resumes after journal sequence ``seq``."""
    packed = struct.pack(">Q", seq)
    token = packed + _cursor_mac(secret, owner, packed)
    return base64.urlsafe_b64encode(token).decode().rstrip("=")


def decode_cursor(secret: bytes, owner: OwnerId, cursor: str) -> int:
    """The sequence an `encode_cursor` cursor carries; raise `InvalidCursorError`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except ValueError:
        raise InvalidCursorError(cursor) from None
    packed, mac = raw[:8], raw[8:]
    if len(raw) != 20 or not hmac.compare_digest(
        mac, _cursor_mac(secret, owner, packed)
    ):
        raise InvalidCursorError(cursor)
    (seq,) = struct.unpack(">Q", packed)
    return int(seq)
