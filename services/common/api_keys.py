"""API keys: their format, and the hash that is all anyone ever stores.

A key reads ``shk_<id>_<secret>``: the id (12 hex digits) names the key in listings,
logs and ``shunter keys revoke``; the secret is 256 random bits. Only
``sha256(whole key)`` in hex is kept (in Redis, in the routing table routers hold), so a
leak of either reveals no usable key. Routers authenticate a request by hashing the
presented key and looking the hash up in the key table of the registry's watch stream.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from grpc.aio import ServicerContext

KEY_PREFIX = "shk_"
_KEY_RE = re.compile(r"^shk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})$")


def new_key() -> tuple[str, str]:
    """A fresh ``(key_id, whole key)``; the whole key is shown to its owner once."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_hash(key: str) -> str:
    """The hex sha256 of the whole key: what is stored and compared."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key, else None (keys from other sources have none)."""
    match = _KEY_RE.match(key)
    return match.group(1) if match else None


def bearer_token(metadata: object) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry in gRPC metadata, if any.

    ``metadata`` is whatever ``context.invocation_metadata()`` returns: pairs (or
    ``_Metadatum`` objects) of key and value.
    """
    for item in metadata or ():
        key, value = item[0], item[1]
        if key.lower() != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def context_token(context: ServicerContext) -> str | None:
    """The bearer token of the call being served."""
    return bearer_token(context.invocation_metadata())


def auth_metadata(key: str) -> tuple[tuple[str, str], ...]:
    """The metadata a client sends to present ``key``."""
    return (("authorization", f"Bearer {key}"),)
