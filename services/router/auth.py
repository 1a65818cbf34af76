"""API-key checks in memory against the key table from the routing table (DESIGN §5).

Keys travel as ``authorization: Bearer shk_<id>_<secret>``; the table holds the sha256
hex of the whole key, so a check is one hash and one dictionary lookup and needs
neither Redis nor the registry.
"""

from __future__ import annotations

from services.common.api_keys import key_hash
from services.common.errors import PermissionDenied, Unauthenticated
from services.router.table import KeyEntry, RoutingSnapshot

_BEARER = "bearer "


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
    key = snapshot.keys.get(key_hash(token))
    if key is None:
        raise Unauthenticated("invalid or revoked API key")
    return key


def authorize(key: KeyEntry, model: str) -> None:
    if key.models and model not in key.models:
        raise PermissionDenied(f"API key '{key.key_id}' may not use model '{model}'")
