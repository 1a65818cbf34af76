"""One place that turns a ``--redis-url`` into a redis-py client, for every mode Redis runs in.

Every service, `shunter up` and `shunter stream` call ``connect(url, ...)``, so they all take
the same URLs:

- ``redis://[USER:PASSWORD@]HOST[:PORT][/DB]`` and ``unix:///PATH`` — one server;
- ``rediss://...`` — the same over TLS (``?ca=FILE&cert=FILE&key=FILE&verify=required|none``;
  redis-py's own ``ssl_ca_certs`` / ``ssl_certfile`` / ``ssl_keyfile`` / ``ssl_cert_reqs``
  names are accepted too);
- ``redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[/DB]`` — the current
  master of MASTER as the sentinels report it, followed across failovers
  (``rediss+sentinel://`` for TLS to sentinels and servers; ``?sentinel_password=`` when the
  sentinels want one of their own);
- ``redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]`` — a Redis Cluster, through
  redis-py's cluster client (``rediss+cluster://`` for TLS). The hosts are only where the
  client starts discovering the cluster.

USER:PASSWORD are the Redis ACL user (``default`` when only a password is given), and are
percent-decoded. A URL this module cannot use raises ``RedisUrlError`` naming the problem;
``redacted(url)`` is the URL without its password, for logs and messages.

Some callers keep all their keys in one hash slot (the registry: its Lua scripts and WATCH
transactions span many keys). On a cluster, ``connect(url, slot_key=KEY)`` gives them a
plain client whose connections go to the primary that owns KEY's slot — found, and found
again after a failover or a resharding, through the cluster client — so scripts, WATCH /
MULTI, pub/sub and ``WAIT`` work exactly as on one server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, ConnectionPool, SSLConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

SINGLE, SENTINEL, CLUSTER = "single", "sentinel", "cluster"

_SCHEMES = {
    "redis": (SINGLE, False), "rediss": (SINGLE, True), "unix": (SINGLE, False),
    "redis+sentinel": (SENTINEL, False), "rediss+sentinel": (SENTINEL, True),
    "redis+cluster": (CLUSTER, False), "rediss+cluster": (CLUSTER, True),
}

#: Query parameters for TLS: our short names, and redis-py's names they stand for.
_TLS_PARAMS = {
    "ca": "ssl_ca_certs", "cert": "ssl_certfile", "key": "ssl_keyfile", "verify": "ssl_cert_reqs",
    "ssl_ca_certs": "ssl_ca_certs", "ssl_certfile": "ssl_certfile", "ssl_keyfile": "ssl_keyfile",
    "ssl_cert_reqs": "ssl_cert_reqs",
}
_VERIFY = {"required": "required", "none": "none", "optional": "optional"}
_SENTINEL_PARAMS = ("sentinel_username", "sentinel_password")

#: Errors that mean "Redis cannot be reached right now" in any mode (as opposed to a bad
#: command): a dead or unreachable server, a failover in progress, a cluster without a
#: primary for a slot.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, OSError, ClusterDownError, TryAgainError,
    RedisClusterException,
)


class RedisUrlError(ValueError):
    """A ``--redis-url`` that cannot be used; the message names what is wrong with it."""


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL asks for, parsed and checked (see the module docstring)."""

    mode: str
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()
    path: str = ""
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls_options: dict[str, str] = field(default_factory=dict)
    sentinel_auth: dict[str, str] = field(default_factory=dict)

    @property
    def is_cluster(self) -> bool:
        return self.mode == CLUSTER

    def describe(self) -> str:
        """Where this target is, without credentials (for logs and messages)."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        if self.path:
            return f"unix:{self.path}"
        if self.mode == SENTINEL:
            return f"sentinel {hosts} master {self.master} db {self.db}"
        if self.mode == CLUSTER:
            return f"cluster {hosts}"
        return f"{hosts}/{self.db}"


def _port(text: str | None, url: str) -> int:
    if not text:
        return 6379
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise RedisUrlError(f"bad port '{text}' in Redis URL {redacted(url)}")
    return int(text)


def _hosts(netloc: str, url: str, many: bool) -> tuple[tuple[str, int], ...]:
    hosts = []
    for part in netloc.split(","):
        if not part:
            raise RedisUrlError(f"empty host in Redis URL {redacted(url)}")
        if part.startswith("["):  # [IPv6]:port
            host, _, rest = part[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else None
        else:
            host, _, port = part.rpartition(":") if ":" in part else (part, "", None)
        hosts.append((host, _port(port, url)))
    if len(hosts) > 1 and not many:
        raise RedisUrlError(
            f"Redis URL {redacted(url)} names several hosts; use redis+sentinel:// or redis+cluster:// for that"
        )
    return tuple(hosts)


def parse_url(url: str) -> RedisTarget:
    """Check a Redis URL and say what it asks for; raises RedisUrlError naming the problem."""
    if not url or "://" not in url:
        raise RedisUrlError(
            f"'{redacted(url)}' is not a Redis URL (redis://, rediss://, unix://, redis+sentinel://, redis+cluster://)"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme not in _SCHEMES:
        raise RedisUrlError(f"unknown Redis URL scheme '{scheme}://' (known: {', '.join(s + '://' for s in _SCHEMES)})")
    mode, tls = _SCHEMES[scheme]
    # urlsplit cannot take "h1:1,h2:2" as a netloc with ports; split credentials by hand.
    rest, _, query = url.split("://", 1)[1].partition("?")
    netloc, _, tail = rest.partition("/")
    username = password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        user, sep, secret = auth.partition(":")
        if sep:
            username, password = (unquote(user) or None), unquote(secret)
        else:  # redis://PASSWORD@host is taken as a password, as redis-cli does
            password = unquote(user)
    params: dict[str, str] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        params[name] = values[-1]
    tls_options: dict[str, str] = {}
    sentinel_auth: dict[str, str] = {}
    for name, value in params.items():
        if name in _TLS_PARAMS:
            if not tls:
                raise RedisUrlError(f"'{name}=' needs TLS: use rediss:// (or rediss+sentinel://, rediss+cluster://)")
            if _TLS_PARAMS[name] == "ssl_cert_reqs":
                if value not in _VERIFY:
                    raise RedisUrlError(f"verify={value}: expected one of {', '.join(_VERIFY)}")
                value = _VERIFY[value]
            tls_options[_TLS_PARAMS[name]] = value
        elif name in _SENTINEL_PARAMS and mode == SENTINEL:
            sentinel_auth[name.removeprefix("sentinel_")] = value
        elif name == "db":
            tail = tail or value
        else:
            raise RedisUrlError(f"unknown parameter '{name}' in Redis URL {redacted(url)}")
    if scheme == "unix":
        path = urlsplit(url).path
        if not path:
            raise RedisUrlError(f"unix:// Redis URL without a socket path: {redacted(url)}")
        db_text = params.get("db", "0")
        if not db_text.isdigit():
            raise RedisUrlError(f"bad database '{db_text}' in Redis URL {redacted(url)}")
        return RedisTarget(SINGLE, False, path=path, db=int(db_text), username=username, password=password)
    if not netloc:
        raise RedisUrlError(f"Redis URL {redacted(url)} names no host")
    hosts = _hosts(netloc, url, many=mode != SINGLE)
    parts = [p for p in tail.split("/") if p]
    master = ""
    if mode == SENTINEL:
        if not parts:
            raise RedisUrlError(f"redis+sentinel:// URL {redacted(url)} names no master: add /MASTER[/DB]")
        master, parts = unquote(parts[0]), parts[1:]
    if len(parts) > 1 or (parts and not parts[0].isdigit()):
        raise RedisUrlError(f"bad database '{'/'.join(parts)}' in Redis URL {redacted(url)} (a number)")
    db = int(parts[0]) if parts else 0
    if mode == CLUSTER and db:
        raise RedisUrlError(f"Redis Cluster has only database 0; {redacted(url)} asks for {db}")
    return RedisTarget(mode, tls, hosts=hosts, master=master, db=db, username=username, password=password,
                       tls_options=tls_options, sentinel_auth=sentinel_auth)


def redacted(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to log)."""
    if "://" not in (url or ""):
        return url or ""
    scheme, rest = url.split("://", 1)
    rest, qmark, query = rest.partition("?")
    netloc, sep, tail = rest.partition("/")
    tail += qmark + query
    if "@" in netloc:
        auth, host = netloc.rsplit("@", 1)
        user, colon, _secret = auth.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    for secret in _SENTINEL_PARAMS[1:]:
        if f"{secret}=" in tail:
            head, _, after = tail.partition(f"{secret}=")
            tail = f"{head}{secret}=***" + ("&" + after.split("&", 1)[1] if "&" in after else "")
    return f"{scheme}://{netloc}{sep}{tail}"


def with_user(url: str, username: str, password: str) -> str:
    """``url`` with its credentials replaced by USER:PASSWORD (percent-encoded)."""
    scheme, rest = url.split("://", 1)
    netloc, sep, tail = rest.partition("/")
    host = netloc.rsplit("@", 1)[-1]
    return f"{scheme}://{quote(username, safe='')}:{quote(password, safe='')}@{host}{sep}{tail}"


def is_cluster(url: str) -> bool:
    return parse_url(url).is_cluster


def _common(target: RedisTarget, options: dict[str, Any]) -> dict[str, Any]:
    kwargs = {**options, "username": target.username, "password": target.password}
    if target.tls:
        kwargs["ssl"] = True
        kwargs.update(target.tls_options)
    return kwargs


def connect(url: str, *, slot_key: str | None = None, **options: Any) -> Any:
    """A redis-py asyncio client for ``url`` (see the module docstring for the URL forms).

    ``options`` are redis-py client options (``socket_timeout``, ``retry``, ...), given the
    same way for every mode. ``slot_key``: on a cluster, a plain client pinned to the primary
    that owns this key's slot (for callers whose keys share one hash tag); elsewhere ignored.
    The returned client is ``redis.asyncio.Redis`` except for a cluster without ``slot_key``,
    which gets ``redis.asyncio.cluster.RedisCluster``.
    """
    target = parse_url(url)
    kwargs = _common(target, options)
    if target.mode == SINGLE:
        # No hidden retries on one server (what from_url gives): callers notice an outage at
        # once and apply their own policy (the router's local fallback, the stream's backoff);
        # redis-py's default would retry connects for seconds first.
        kwargs.setdefault("retry", None)
        if target.path:
            kwargs.pop("ssl", None)
            return aioredis.Redis(unix_socket_path=target.path, db=target.db, **kwargs)
        host, port = target.hosts[0]
        return aioredis.Redis(host=host, port=port, db=target.db, **kwargs)
    if target.mode == SENTINEL:
        sentinel_kwargs = {k: v for k, v in kwargs.items() if k.startswith("socket_") or k.startswith("ssl")}
        sentinel_kwargs.update(target.sentinel_auth)
        sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs)
        return sentinel.master_for(target.master, db=target.db, connection_pool_class=_SentinelPool, **kwargs)
    cluster = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.hosts], **kwargs)
    if slot_key is None:
        return cluster
    pool = SlotOwnerPool(SlotLocator(cluster, slot_key), **kwargs)
    return aioredis.Redis.from_pool(pool)


async def rediscover(client: Any) -> None:
    """Drop ``client``'s idle connections so the next ones ask where the primary is now.

    For when a reply suggests the topology moved without the connection failing (e.g. an
    old master, not yet demoted, that lost its replicas: ``WAIT`` falls short). Sentinel
    pools ask the sentinels again on connect; a slot-pinned pool asks the cluster.
    """
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SlotOwnerPool):
        pool.locator.stale()
        await ConnectionPool.disconnect(pool, inuse_connections=False)
    elif pool is not None:
        await pool.disconnect(inuse_connections=False)


def hash_tagged(prefix: str) -> str:
    """``prefix`` as one Redis Cluster hash tag: ``shunter:registry:`` → ``{shunter:registry}:``.

    A prefix that already holds a ``{tag}`` is kept as it is (the operator chose the tag).
    """
    start = prefix.find("{")
    if start != -1 and prefix.find("}", start + 2) != -1:
        return prefix
    return "{" + prefix.rstrip(":") + "}:"


class _SentinelPool(SentinelConnectionPool):
    """Closes the connections to the sentinels too when the client closes (redis-py leaves them)."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        for client in self.sentinel_manager.sentinels:
            await client.connection_pool.disconnect()


# ---- one slot of a cluster through a plain client ---------------------------------------


class SlotLocator:
    """Where the primary for one key's slot is, as the cluster client last learned it.

    ``stale()`` (a refused or failed connection, MOVED, READONLY) makes the next lookup ask
    the cluster again, so connections follow a failover once the cluster has promoted a
    replica.
    """

    def __init__(self, cluster: RedisCluster, key: str) -> None:
        self.cluster = cluster
        self.slot = key_slot(key.encode())
        self._stale = True
        self._started = False
        self._lock = asyncio.Lock()

    def stale(self) -> None:
        self._stale = True

    async def primary(self) -> tuple[str, int]:
        async with self._lock:
            if self._stale:
                if not self._started:
                    await self.cluster.initialize()
                    self._started = True
                else:
                    await self.cluster.nodes_manager.initialize()
                self._stale = False
            node = self.cluster.nodes_manager.get_node_from_slot(self.slot)
            return node.host, int(node.port)

    async def close(self) -> None:
        await self.cluster.aclose()


class SlotOwnerConnection(Connection):
    """A connection to whichever primary owns the locator's slot (found at each connect)."""

    def __init__(self, *, locator: SlotLocator, **kwargs: Any) -> None:
        self.locator = locator
        super().__init__(**kwargs)

    async def connect(self) -> None:
        if self.is_connected:
            return
        try:
            self.host, self.port = await self.locator.primary()
            await super().connect()
        except OUTAGE_ERRORS as exc:
            self.locator.stale()
            if isinstance(exc, RedisConnectionError):
                raise
            raise RedisConnectionError(f"no primary reachable for slot {self.locator.slot}: {exc}") from exc

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except (ReadOnlyError, AskError, ClusterDownError, TryAgainError) as exc:
            # The node no longer serves the slot as primary (failover, resharding, cluster
            # down): drop the connection so the next one goes where the slot now lives.
            self.locator.stale()
            await self.disconnect()
            raise RedisConnectionError(f"slot {self.locator.slot} moved or unavailable: {exc}") from exc


class SlotOwnerSSLConnection(SlotOwnerConnection, SSLConnection):
    pass


class SlotOwnerPool(ConnectionPool):
    """A connection pool whose connections all go to the primary of one cluster slot."""

    def __init__(self, locator: SlotLocator, **kwargs: Any) -> None:
        kwargs["connection_class"] = SlotOwnerSSLConnection if kwargs.pop("ssl", False) else SlotOwnerConnection
        super().__init__(**kwargs)
        self.connection_kwargs["locator"] = locator
        self.locator = locator

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        await self.locator.close()


__all__ = [
    "CLUSTER",
    "OUTAGE_ERRORS",
    "SENTINEL",
    "SINGLE",
    "RedisTarget",
    "RedisUrlError",
    "connect",
    "hash_tagged",
    "is_cluster",
    "parse_url",
    "redacted",
    "rediscover",
    "with_user",
]
