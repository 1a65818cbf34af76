"""API keys: their format, and the hash that is all anyone ever stores.

A key reads ``shk_<id>_<secret>``: the id (12 hex digits) names the key in listings,
logs and ``shunter keys revoke``; the secret is 256 random bits. Only
``sha256(whole key)`` in hex is kept (in Redis, in the routing table routers hold), so a
leak of either reveals no usable key. Routers authenticate a request by hashing the
presented key and looking the hash up in the key table of the registry's watch stream.

Each key has a **role** that bounds what it may do, so no service needs the admin key:

- ``admin``: everything (operators; the bootstrap key);
- ``worker``: register, heartbeat, deregister and watch the routing table;
- ``router``: watch the routing table and read the catalogue; call workers' inference;
- ``client``: inference through routers only (the data plane; what ``keys create`` makes
  by default).

The registry checks ``allowed(role, method)`` at its edge; workers in cluster mode accept
inference only from ``INFERENCE_CALLERS``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from grpc.aio import ServicerContext

KEY_PREFIX = "shk_"

ADMIN, ROUTER, WORKER, CLIENT = "admin", "router", "worker", "client"
ROLES = (ADMIN, ROUTER, WORKER, CLIENT)
#: Registry methods each role other than admin may call (admin may call all of them).
REGISTRY_METHODS: dict[str, frozenset[str]] = {
    WORKER: frozenset({"RegisterWorker", "Heartbeat", "DeregisterWorker", "WatchRoutingTable",
                       # shunter.monitor.v1.Monitor: drift profiles in, window counts out
                       "GetReferenceProfile", "ReportDriftCounts"}),
    ROUTER: frozenset({"WatchRoutingTable", "ListModels", "GetModel", "GetTrafficPolicy", "ListWorkers"}),
    CLIENT: frozenset(),
}
#: Roles a worker in cluster mode serves inference to.
INFERENCE_CALLERS = frozenset({ROUTER, ADMIN})
#: Roles a router serves inference to: a leaked worker or router key buys no inference.
DATA_PLANE_ROLES = frozenset({CLIENT, ADMIN})
_KEY_RE = re.compile(r"^shk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})$")


def role_of(key: object) -> str:
    """The role of an ``ApiKey`` record; keys made before roles existed get theirs from ``admin``."""
    role = getattr(key, "role", "")
    if role:
        return role
    return ADMIN if getattr(key, "admin", False) else CLIENT


def check_role(role: str) -> str:
    """``role`` if it is one of ROLES, else ValueError naming the choices."""
    if role not in ROLES:
        raise ValueError(f"unknown key role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def allowed(role: str, method: str) -> bool:
    """Whether a key of ``role`` may call the registry's ``method``."""
    return role == ADMIN or method in REGISTRY_METHODS.get(role, frozenset())


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


def bearer_token(metadata: Any) -> str | None:
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
