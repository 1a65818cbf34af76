"""API-key checks in memory against the key table from the routing table (DESIGN §5).

Keys travel as ``authorization: Bearer shk_<id>_<secret>``; the table holds the sha256
hex of the whole key, so a check is one hash and one dictionary lookup and needs
neither Redis nor the registry. The hash of a token is remembered (``_token_hash``): a
client on one ModelStreamInfer stream sends the same key with every message, and the
sha256 was the largest single cost of a stream message in the router's own code. The
lookup in the current table stays per request, so a revoked key stops at once.
"""

from __future__ import annotations

import functools

from services.common.api_keys import key_hash
from services.common.errors import PermissionDenied, Unauthenticated
from services.router.table import KeyEntry, RoutingSnapshot

_BEARER = "bearer "
#: Tokens whose hashes are kept: a few thousand keys in use at once is a large deployment;
#: beyond that the least recently used are hashed again.
_token_hash = functools.lru_cache(maxsize=4096)(key_hash)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization or not authorization[:7].lower() == _BEARER:
        return None
    token = authorization[7:].strip()
    return token or None


def authenticate(snapshot: RoutingSnapshot, authorization: str | None) -> KeyEntry:
    """The key behind the request's ``authorization`` metadata, or UNAUTHENTICATED."""
    token = bearer_token(authorization)
    if token is None:
        raise Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'")
    key = snapshot.keys.get(_token_hash(token))
    if key is None:
        raise Unauthenticated("invalid or revoked API key")
    return key


def authorize(key: KeyEntry, model: str) -> None:
    if key.models and model not in key.models:
        raise PermissionDenied(f"API key '{key.key_id}' may not use model '{model}'")
