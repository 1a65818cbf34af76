"""Redis ACL users for the Redis that `shunter up` starts: one per service, no anonymous access.

`up` writes an ACL file (``redis.acl``, passwords stored as sha256 only) that its
redis-server loads with ``--aclfile``, turns the ``default`` user off, and gives each
service a user that reaches only its own keys with only the commands it runs:

- ``registry``: ``shunter:registry:*`` keys and the ``shunter:registry:events`` channel;
  reads, writes, Lua scripts, WATCH / MULTI, pub/sub, ``WAIT``.
  It also reaches the per-version statistics the routers write (it only reads them;
  plain ``~`` because Redis 6, the bundled fallback, has no ``%R~``).
- ``router``: the rate-limit buckets (``shunter:rl:*``), the cache (``shunter:cache:*``) and
  the per-version statistics (``shunter:vstats:*``, ``shunter:sstats:*``,
  ``shunter:shadow_samples:*``, read by rollouts and reports); reads, writes and Lua
  scripts, no pub/sub.
- ``admin``: everything, for operators (``shunter registry export``, ``shunter stream``,
  ``redis-cli``); it is the ``SHUNTER_REDIS_URL`` in up's env file.

Workers never talk to Redis (their leases go through the registry), so they get no user.
The URLs with the passwords reach the services through their environment
(``SHUNTER_REGISTRY_REDIS_URL``, ``SHUNTER_ROUTER_REDIS_URL``: these win over an inherited
``SHUNTER_REDIS_URL``), never their command line, and are written to ``redis-urls``
(mode 0600) in the run directory for operators.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from services.common.redis_connect import with_user
from services.common.version_windows import acl_patterns
from services.registry.scripts import KeyLayout

#: Commands every service user needs, whatever its keys (scripts call TIME).
_BASE = "-@all +@connection +ping +time"


@dataclass(frozen=True)
class RedisUser:
    name: str
    password: str
    #: The ACL rule text after the password (keys, channels, commands).
    rules: str

    def acl_line(self) -> str:
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        return f"user {self.name} on #{digest} {self.rules}"


def service_users(prefix: str = "shunter:", *, cluster: bool = False) -> dict[str, RedisUser]:
    """Fresh users (random passwords) for the registry, the router and operators.

    ``cluster``: the registry's keys carry a hash tag there (``{shunter:registry}:*``).
    """
    registry = KeyLayout.for_prefix(prefix, cluster=cluster).prefix
    # The cluster client learns the slot map and how to find keys in a command.
    more = " +cluster|slots +cluster|shards +command" if cluster else ""
    # Per-version statistics: routers write them, the registry reads them (rollouts, reports).
    stats = " ".join(f"~{pattern}" for pattern in acl_patterns(prefix, cluster=cluster))
    rules = {
        "registry": (f"resetchannels ~{registry}* &{registry}events {stats} "
                     f"{_BASE} +@read +@write +@scripting +@transaction +@pubsub +wait -@dangerous{more}"),
        "router": (f"resetchannels ~{prefix}rl:* ~{prefix}cache:* {stats} {_BASE} +@read +@write +@scripting "
                   f"-@dangerous{more}"),
        "admin": "~* &* +@all",
    }
    return {name: RedisUser(name, secrets.token_urlsafe(24), rule) for name, rule in rules.items()}


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def write_acl_file(path: Path, users: dict[str, RedisUser]) -> None:
    """The redis-server ``--aclfile``: the default user off, then one line per user."""
    lines = ["user default off resetkeys resetchannels -@all", *(u.acl_line() for u in users.values())]
    _write_private(path, "".join(line + "\n" for line in lines))


def user_urls(base_url: str, users: dict[str, RedisUser]) -> dict[str, str]:
    """user name → ``base_url`` with that user's credentials."""
    return {name: with_user(base_url, name, user.password) for name, user in users.items()}


def write_url_file(path: Path, urls: dict[str, str]) -> None:
    """``NAME=URL`` per user, owner-readable only, for operators and scripts."""
    _write_private(path, "".join(f"{name}={url}\n" for name, url in urls.items()))
