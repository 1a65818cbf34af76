"""The registry's state in Redis: atomic validated writes, one revision, pub/sub wakeups.

Writes that depend on current state (catalogue, policies, keys) use optimistic
transactions: ``WATCH`` the revision counter, read, validate in Python, then ``MULTI``
the changes together with ``INCR revision`` and a ``PUBLISH``. Because every write bumps
that one counter, watching it alone serialises all writes: a concurrent write makes
``EXEC`` fail and the write is re-read, re-validated and retried, so nothing is lost.
Lease changes, which depend on nothing else, are single Lua scripts.

Every replica follows Redis: a pub/sub message (or, as a safety net, a tick every
``refresh_interval_s``) makes it sweep expired leases and, if the revision moved, read
a new snapshot. When Redis is down, writes raise UNAVAILABLE and everything else keeps
serving the last snapshot until Redis is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, WatchError

from services.common.errors import NotFound, Unavailable
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.registry import metrics, scripts
from services.registry.catalogue import Catalogue

logger = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_WRITE_ATTEMPTS = 200


def redacted_url(url: str) -> str:
    """``host:port/db`` of a Redis URL, without the password it may hold."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return f"unix:{parsed.path}"
    return f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}{parsed.path or ''}"


def status_fingerprint(statuses: Any) -> str:
    """What routing depends on in a heartbeat (readiness, errors), but not load.

    A heartbeat bumps the revision (and so wakes every watcher) only when this changes;
    the address cannot change without a new registration, which always bumps.
    """
    parts = sorted((s.model, s.version, s.ready, s.error) for s in statuses)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _pairs(flat: list[Any]) -> list[tuple[bytes, Any]]:
    return list(zip(flat[0::2], flat[1::2], strict=True))


class RedisStore:
    def __init__(
        self,
        redis_url: str,
        key_prefix: str = "shunter:",
        *,
        refresh_interval_s: float = 1.0,
        socket_timeout_s: float = 3.0,
    ) -> None:
        self.where = redacted_url(redis_url)
        self.keys = scripts.KeyLayout.for_prefix(key_prefix)
        self._redis = aioredis.Redis.from_url(
            redis_url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=min(socket_timeout_s, 2.0),
            # One quick retry covers a pooled connection that died with a Redis restart;
            # anything longer is an outage, reported at once rather than hidden.
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), 1),
        )
        self._interval = refresh_interval_s
        self._catalogue: Catalogue | None = None
        self._changed = asyncio.Event()
        self._load_lock = asyncio.Lock()
        self._up: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._script = {
            name: self._redis.register_script(getattr(scripts, name))
            for name in ("SNAPSHOT", "SWEEP", "REGISTER_WORKER", "HEARTBEAT", "DEREGISTER_WORKER",
                         "LOOKUP_KEY", "ADD_KEY_IF_ABSENT", "RAISE_REVISION")
        }
        #: Called with each new snapshot (the app uses it to keep the bootstrap key present).
        self.on_snapshot: Callable[[Catalogue], Awaitable[None]] | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load a first snapshot if Redis answers, then follow it in the background."""
        try:
            await self.refresh()
        except RedisError as exc:
            self._mark_down(exc)
        self._task = asyncio.create_task(self._follow(), name="registry-follow-redis")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._redis.aclose()

    @property
    def catalogue(self) -> Catalogue | None:
        return self._catalogue

    @property
    def redis_up(self) -> bool:
        return bool(self._up)

    def change_event(self) -> asyncio.Event:
        """An event set at the next change of snapshot (take it before reading the snapshot)."""
        return self._changed

    # ---- following Redis -------------------------------------------------------------

    async def _follow(self) -> None:
        backoff = 0.2
        pubsub = None
        while True:
            try:
                if pubsub is None:
                    pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                    await pubsub.subscribe(self.keys.events)
                    await self.refresh()  # changes made while we were not subscribed
                message = await pubsub.get_message(timeout=self._interval)
                while message is not None:  # coalesce a burst of writes into one read
                    message = await pubsub.get_message(timeout=0)
                await self.refresh()
                backoff = 0.2
            except asyncio.CancelledError:
                if pubsub is not None:
                    await pubsub.aclose()
                raise
            except (RedisError, OSError) as exc:
                self._mark_down(exc)
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except (RedisError, OSError):
                        pass
                    pubsub = None
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 2.0)
            except Exception:
                logger.exception("registry: unexpected error while following Redis")
                await asyncio.sleep(1.0)

    async def refresh(self, *, force: bool = False) -> Catalogue:
        """Sweep expired leases; read a new snapshot if the revision moved (or ``force``)."""
        async with self._load_lock:
            revision, expired = await self._script["SWEEP"](self.keys.script_keys, [self.keys.events])
            if expired:
                logger.info("registry: %s worker lease(s) expired", expired)
                metrics.LEASES_EXPIRED.inc(expired)
            current = self._catalogue
            if current is not None and not force and int(revision) == current.revision and self._up:
                return current
            catalogue = await self._load()
            if current is not None and catalogue.revision < current.revision:
                logger.error(
                    "registry: Redis at %s went back from revision %s to %s: it lost data "
                    "(restarted without persistence?); raising the revision past it",
                    self.where, current.revision, catalogue.revision,
                )
                await self._script["RAISE_REVISION"](
                    self.keys.script_keys, [self.keys.events, current.revision]
                )
                catalogue = await self._load()
            self._mark_up()
            self._install(catalogue)
        if self.on_snapshot is not None:
            await self.on_snapshot(catalogue)
        return self._catalogue or catalogue

    async def _load(self) -> Catalogue:
        reply = await self._script["SNAPSHOT"](
            self.keys.script_keys, [self.keys.events, self.keys.versions("")]
        )
        revision, now_ms = int(reply[0]), int(reply[1])
        policies = {k.decode(): rpb.TrafficPolicy.FromString(v) for k, v in _pairs(reply[2])}
        addresses = {k.decode(): v.decode() for k, v in _pairs(reply[3])}
        statuses = dict(_pairs(reply[4]))
        workers = {}
        for worker_id, expires in _pairs(reply[5]):
            wid = worker_id.decode()
            expires_ms = int(float(expires))
            if expires_ms < now_ms or wid not in addresses:
                continue
            worker = rpb.Worker.FromString(statuses.get(worker_id, b""))
            worker.worker_id, worker.address, worker.expires_at_ms = wid, addresses[wid], expires_ms
            workers[wid] = worker
        keys = {k.decode(): rpb.ApiKey.FromString(v) for k, v in _pairs(reply[6])}
        versions = {}
        for model, flat in zip(reply[7], reply[8:], strict=True):
            parsed = {k.decode(): rpb.ModelVersion.FromString(v) for k, v in _pairs(flat)}
            if parsed:
                versions[model.decode()] = parsed
        return Catalogue(revision, versions, policies, workers, keys)

    def _install(self, catalogue: Catalogue) -> None:
        previous = self._catalogue
        self._catalogue = catalogue
        metrics.REVISION.set(catalogue.revision)
        if previous is None or previous.revision != catalogue.revision:
            event, self._changed = self._changed, asyncio.Event()
            event.set()

    def _mark_up(self) -> None:
        if self._up is not True:
            if self._up is False:
                logger.warning("registry: Redis at %s is back", self.where)
            self._up = True
            metrics.REDIS_UP.set(1)

    def _mark_down(self, exc: BaseException) -> None:
        if self._up is not False:
            revision = self._catalogue.revision if self._catalogue else "none"
            logger.warning(
                "registry: Redis at %s is unavailable (%s); refusing writes, serving the last "
                "snapshot (revision %s) until it is back",
                self.where, type(exc).__name__, revision,
            )
            self._up = False
            metrics.REDIS_UP.set(0)

    def unavailable(self, exc: BaseException) -> Unavailable:
        self._mark_down(exc)
        return Unavailable(
            f"the registry's Redis ({self.where}) is unavailable ({type(exc).__name__}); "
            "writes are refused until it is back, reads serve the last snapshot"
        )

    # ---- reads -----------------------------------------------------------------------

    async def current(self, *, fresh: bool = True, force: bool = False) -> Catalogue:
        """The latest snapshot: re-read from Redis when it answers, else the last one seen."""
        if fresh and self._up is not False:
            try:
                return await self.refresh(force=force)
            except RedisError as exc:
                self._mark_down(exc)
        if self._catalogue is None:
            raise Unavailable(
                f"the registry's Redis ({self.where}) has not answered since this registry started; "
                "nothing to serve yet"
            )
        return self._catalogue

    async def lookup_key(self, sha256: str) -> rpb.ApiKey | None:
        """The key with this hash, straight from Redis (raises RedisError when it is down)."""
        found = await self._script["LOOKUP_KEY"](self.keys.script_keys, [self.keys.events, sha256])
        return rpb.ApiKey.FromString(found) if found else None

    # ---- writes ----------------------------------------------------------------------

    async def transact(
        self,
        prepare: Callable[[Any], Awaitable[tuple[T, Callable[[Any], None]]]],
    ) -> tuple[T, int]:
        """Run one validated write atomically; return its result and the new revision.

        ``prepare(pipe)`` reads what it needs (the pipeline is watching the revision and
        executes reads at once), validates (raising a ShunterError to refuse), and returns
        the result plus a function that queues the writes on the pipeline.
        """
        for attempt in range(_MAX_WRITE_ATTEMPTS):
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(self.keys.revision)
                    result, queue_writes = await prepare(pipe)
                    pipe.multi()
                    queue_writes(pipe)
                    pipe.incr(self.keys.revision)
                    pipe.publish(self.keys.events, b"write")
                    replies = await pipe.execute()
                revision = int(replies[-2])
                metrics.WRITE_RETRIES.observe(attempt)
                self._mark_up()
                return result, revision
            except WatchError:
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 6))))
            except RedisError as exc:
                raise self.unavailable(exc) from None
        raise Unavailable("too many concurrent registry writes; try again")

    async def run_script(self, name: str, *args: Any) -> Any:
        try:
            reply = await self._script[name](self.keys.script_keys, [self.keys.events, *args])
        except RedisError as exc:
            raise self.unavailable(exc) from None
        self._mark_up()
        return reply

    async def register_worker(self, worker_id: str, address: str, status: rpb.Worker, ttl_ms: int) -> tuple[
        int, int
    ]:
        fp = status_fingerprint(status.versions)
        revision, expires = await self.run_script(
            "REGISTER_WORKER", worker_id, address, status.SerializeToString(), fp, ttl_ms
        )
        return int(revision), int(expires)

    async def heartbeat(self, worker_id: str, status: rpb.Worker) -> tuple[int, int, int]:
        """-> (revision or 0 when nothing routing-relevant changed, expires_at_ms, ttl_ms)."""
        fp = status_fingerprint(status.versions)
        alive, revision, expires, ttl = await self.run_script(
            "HEARTBEAT", worker_id, status.SerializeToString(), fp
        )
        if not alive:
            raise NotFound(f"worker {worker_id} has no lease (expired or deregistered); register again")
        return int(revision), int(expires), int(ttl)

    async def add_key_if_absent(self, key: rpb.ApiKey) -> int:
        return int(
            await self.run_script("ADD_KEY_IF_ABSENT", key.key_id, key.secret_sha256, key.SerializeToString())
        )


def now_ms() -> int:
    return int(time.time() * 1000)

