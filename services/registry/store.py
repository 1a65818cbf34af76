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

Redis can come back without its data (restarted without persistence, a failover to a
replica that was behind). Versions and keys are never deleted, so a snapshot that lacks
one this replica holds, a revision that went back, or a missing store ``epoch`` means
data was lost: the replica then writes its last snapshot back (leases included) and
raises the revision past the old one, so no watcher is ever sent the smaller catalogue
(``shunter_registry_store_resets`` counts it, an ERROR line says what was restored).

After the registry starts, and after Redis returns from an outage, leases get one lease
TTL of grace: none is swept and an expired one is renewed by its worker's heartbeat,
since the workers could not reach the registry either while it was away.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, WatchError

from services.common import background, redis_connect
from services.common.errors import FailedPrecondition, NotFound, Unavailable
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.registry import merge, metrics, scripts
from services.registry.catalogue import Catalogue

logger = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_WRITE_ATTEMPTS = 200


def status_fingerprint(statuses: Any) -> str:
    """What routing depends on in a heartbeat (readiness, errors), but not load.

    A heartbeat bumps the revision (and so wakes every watcher) only when this changes;
    the address cannot change without a new registration, which always bumps.
    """
    parts = sorted((s.model, s.version, s.ready, s.error) for s in statuses)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


#: Exceptions from a Redis call that mean "Redis is unavailable" (an outage: writes refused
#: with UNAVAILABLE, reads from the last snapshot), not a bug. RuntimeError too, as the
#: router's Redis link has it (services/router/redis_link.py): uvloop, the services' event
#: loop, raises it for a write on a transport the peer reset between connect and the first
#: command (a Redis going away mid-connect), and redis-py passes it through, so it surfaced
#: as INTERNAL. Each handler that catches these wraps Redis calls only.
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisError, OSError, RuntimeError)


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
        lease_grace_s: float = 10.0,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        target = redis_connect.parse_url(redis_url)
        self.where = target.describe()
        self.keys = scripts.KeyLayout.for_prefix(key_prefix, cluster=target.is_cluster)
        # On a cluster every key shares one hash tag, so one plain client pinned to that
        # slot's primary runs the scripts, transactions and pub/sub as on one server.
        self._redis = redis_connect.connect(
            redis_url,
            slot_key=self.keys.revision,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=min(socket_timeout_s, 2.0),
            # One quick retry covers a pooled connection that died with a Redis restart;
            # anything longer is an outage, reported at once rather than hidden.
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), 1),
        )
        #: Acknowledge a catalogue write only once this many replicas confirm it (``WAIT``).
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._interval = refresh_interval_s
        self._catalogue: Catalogue | None = None
        self._changed = asyncio.Event()
        self._load_lock = asyncio.Lock()
        self._up: bool | None = None
        self._grace_s = lease_grace_s
        self._grace_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self._script = {
            name: self._redis.register_script(getattr(scripts, name))
            for name in ("SNAPSHOT", "SWEEP", "REGISTER_WORKER", "HEARTBEAT", "DEREGISTER_WORKER",
                         "LOOKUP_KEY", "ADD_KEY_IF_ABSENT", "INIT_EPOCH")
        }
        #: Called with each new snapshot (the app uses it to keep the bootstrap key present).
        self.on_snapshot: Callable[[Catalogue], Awaitable[None]] | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load a first snapshot if Redis answers, then follow it in the background."""
        try:
            await self.refresh()
        except REDIS_DOWN as exc:
            self._mark_down(exc)
        self._task = asyncio.create_task(self._follow(), name="registry-follow-redis")

    async def close(self) -> None:
        """Stop following and close the client, whatever state Redis is in.

        Bounded (``background.stop``): a Redis that resets connections can make the follow
        task lose a cancel, and shutdown must not wait on it. redis-py bounds each
        connection's close by its connect timeout.
        """
        await background.stop(self._task)
        self._task = None
        await self._redis.aclose()

    @property
    def catalogue(self) -> Catalogue | None:
        return self._catalogue

    @property
    def redis(self) -> Any:
        """The client itself, for parts that keep their own keys (rollouts, statistics)."""
        return self._redis

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
            except REDIS_DOWN as exc:
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except REDIS_DOWN:
                        pass
                    pubsub = None
                background.raise_if_cancelled()  # a cancel redis-py turned into ConnectionError
                self._mark_down(exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 2.0)
            except Exception:
                background.raise_if_cancelled()
                logger.exception("registry: unexpected error while following Redis")
                await asyncio.sleep(1.0)

    def in_grace(self) -> bool:
        """True while leases are not swept: Redis not (yet) known up, or just back."""
        return self._up is not True or time.monotonic() < self._grace_until

    def _grace_length_s(self) -> float:
        ttls = self._catalogue.lease_ttl_ms.values() if self._catalogue else ()
        return max([self._grace_s, *(ttl / 1000 for ttl in ttls)])

    async def refresh(self, *, force: bool = False) -> Catalogue:
        """Sweep expired leases; read a new snapshot if the revision moved (or ``force``).

        A snapshot that shows Redis lost data is never installed: the last one is written
        back first (see the module docstring).
        """
        async with self._load_lock:
            grace = self.in_grace()
            metrics.LEASE_GRACE.set(1 if grace else 0)
            revision, expired, epoch = await self._script["SWEEP"](
                self.keys.script_keys, [self.keys.events, "1" if grace else "0"]
            )
            if expired:
                logger.info("registry: %s worker lease(s) expired", expired)
                metrics.LEASES_EXPIRED.inc(expired)
            current = self._catalogue
            if (current is not None and not force and int(revision) == current.revision
                    and _text(epoch) == current.epoch and self._up):
                return current
            catalogue = await self.read(include_expired=grace)
            if current is None and not catalogue.epoch:
                # A store this replica has not seen before, with no identity yet: give it one.
                await self._script["INIT_EPOCH"](self.keys.script_keys, [self.keys.events, new_epoch()])
                catalogue = await self.read(include_expired=grace)
            elif current is not None:
                catalogue = await self._repair(current, catalogue, grace)
            self._mark_up()
            self._install(catalogue)
        if self.on_snapshot is not None:
            await self.on_snapshot(catalogue)
        return self._catalogue or catalogue

    async def _repair(self, current: Catalogue, found: Catalogue, grace: bool) -> Catalogue:
        """``found`` if Redis kept everything ``current`` holds; else restore ``current``."""
        lost = current.missing_from(found)
        went_back = found.revision < current.revision
        if not lost and not went_back and found.epoch:
            return found
        why = (
            "its store epoch is gone" if not found.epoch
            else f"its revision went back from {current.revision} to {found.revision}" if went_back
            else f"it no longer holds {', '.join(lost[:3])}{' …' if len(lost) > 3 else ''}"
        )
        _present, revision = await self.merge(current, overwrite=True, leases=True)
        metrics.STORE_RESETS.inc()
        logger.error(
            "registry: Redis at %s lost data (%s; restarted without persistence?): wrote back "
            "the last snapshot (revision %s: %s, %s leases) as revision %s; nothing smaller was "
            "published. Back up with `shunter registry export FILE`; run Redis with AOF",
            self.where, why, current.revision, current.counts(), len(current.workers), revision,
        )
        return await self.read(include_expired=grace)

    async def merge(
        self, source: Catalogue, *, overwrite: bool, leases: bool,
        extra: Callable[[Any], Awaitable[Callable[[Any], None]]] | None = None,
    ) -> tuple[Catalogue, int]:
        """Add ``source`` to the store in one transaction; -> (what was there, new revision).

        Without ``overwrite`` (an import) a version or key that Redis holds with other
        content refuses the whole merge with FailedPrecondition, and nothing is written.
        The revision ends above both the store's and ``source``'s, so every watcher takes it.
        ``extra(pipe)`` (an import's operator records, backup_records.py) reads with the
        watching pipeline and returns more writes for the same transaction.
        """
        for _attempt in range(_MAX_WRITE_ATTEMPTS):
            present = await self.read(include_expired=True)
            if not overwrite:
                clashes = merge.conflicts(source, present)
                if clashes:
                    raise FailedPrecondition(
                        f"{len(clashes)} item(s) differ from what the registry holds, nothing imported: "
                        + "; ".join(clashes[:5])
                    )
            revision = max(present.revision, source.revision) + 1
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(self.keys.revision, self.keys.epoch)
                    if (int(await pipe.get(self.keys.revision) or 0) != present.revision
                            or _text(await pipe.get(self.keys.epoch)) != present.epoch):
                        continue  # changed since it was read: read again
                    queue_extra = await extra(pipe) if extra is not None else None
                    pipe.multi()
                    if queue_extra is not None:
                        queue_extra(pipe)
                    merge.queue_merge(pipe, self.keys, source, present, overwrite=overwrite,
                                      leases=leases, fingerprint=status_fingerprint)
                    pipe.set(self.keys.epoch, present.epoch or source.epoch or new_epoch())
                    pipe.set(self.keys.revision, revision)
                    pipe.publish(self.keys.events, b"merge")
                    await pipe.execute()
                await self._replicated()
                return present, revision
            except WatchError:
                await asyncio.sleep(random.uniform(0, 0.01))
        raise Unavailable("too many concurrent registry writes; try again")

    async def read(self, *, include_expired: bool = False) -> Catalogue:
        """A snapshot straight from Redis (raises RedisError when it is down)."""
        reply = await self._script["SNAPSHOT"](
            self.keys.script_keys, [self.keys.events, self.keys.versions("")]
        )
        revision, now_ms = int(reply[0]), int(reply[1])
        policies = {k.decode(): rpb.TrafficPolicy.FromString(v) for k, v in _pairs(reply[2])}
        addresses = {k.decode(): v.decode() for k, v in _pairs(reply[3])}
        statuses = dict(_pairs(reply[4]))
        ttls = {k.decode(): int(v) for k, v in _pairs(reply[8])}
        workers = {}
        for worker_id, expires in _pairs(reply[5]):
            wid = worker_id.decode()
            expires_ms = int(float(expires))
            if (expires_ms < now_ms and not include_expired) or wid not in addresses:
                continue
            worker = rpb.Worker.FromString(statuses.get(worker_id, b""))
            worker.worker_id, worker.address, worker.expires_at_ms = wid, addresses[wid], expires_ms
            workers[wid] = worker
        keys = {k.decode(): rpb.ApiKey.FromString(v) for k, v in _pairs(reply[6])}
        versions = {}
        for model, flat in zip(reply[9], reply[10:], strict=True):
            parsed = {k.decode(): rpb.ModelVersion.FromString(v) for k, v in _pairs(flat)}
            if parsed:
                versions[model.decode()] = parsed
        return Catalogue(revision, versions, policies, workers, keys, epoch=_text(reply[7]),
                         lease_ttl_ms={w: t for w, t in ttls.items() if w in workers}, read_at_ms=now_ms)

    def _install(self, catalogue: Catalogue) -> None:
        previous = self._catalogue
        self._catalogue = catalogue
        metrics.REVISION.set(catalogue.revision)
        if previous is None or previous.revision != catalogue.revision:
            event, self._changed = self._changed, asyncio.Event()
            event.set()

    def _mark_up(self) -> None:
        if self._up is not True:
            grace = self._grace_length_s()
            if self._up is False:
                logger.warning("registry: Redis at %s is back; %.0f s of lease grace", self.where, grace)
            self._grace_until = time.monotonic() + grace
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
            except REDIS_DOWN as exc:
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
                    await pipe.watch(self.keys.revision, self.keys.epoch)
                    known = self._catalogue.epoch if self._catalogue else ""
                    if known and _text(await pipe.get(self.keys.epoch)) != known:
                        # Redis lost its data since the last snapshot: restore before writing.
                        await pipe.reset()
                        await self.refresh()
                        continue
                    result, queue_writes = await prepare(pipe)
                    pipe.multi()
                    queue_writes(pipe)
                    pipe.incr(self.keys.revision)
                    pipe.publish(self.keys.events, b"write")
                    replies = await pipe.execute()
                revision = int(replies[-2])
                await self._replicated()
                metrics.WRITE_RETRIES.observe(attempt)
                self._mark_up()
                return result, revision
            except WatchError:
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 6))))
            except REDIS_DOWN as exc:
                raise self.unavailable(exc) from None
        raise Unavailable("too many concurrent registry writes; try again")

    async def _replicated(self) -> None:
        """With ``wait_replicas``: return once that many replicas hold the last write.

        ``WAIT`` counts what the replicas acknowledged of the writes made on *its*
        connection, and a transaction's connection goes back to the pool with ``EXEC``; so
        a small write (the fence) and ``WAIT`` go together on one connection after it.
        Replication is ordered, so replicas that have the fence have the write before it.
        The write is applied on the primary either way: a shortfall raises UNAVAILABLE
        saying the write may not survive a failover (re-reading shows whether it is there).
        """
        if self._wait_replicas <= 0:
            return
        pipe = self._redis.pipeline(transaction=False)
        pipe.incr(self.keys.wait_fence)
        pipe.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms)
        try:
            _fence, confirmed = await pipe.execute()
        except REDIS_DOWN as exc:
            raise self.unavailable(exc) from None
        metrics.WAIT_REPLICAS.observe(int(confirmed))
        if int(confirmed) < self._wait_replicas:
            # Maybe a primary that was failed over and not yet demoted: look again.
            await redis_connect.rediscover(self._redis)
            raise Unavailable(
                f"the write was applied on Redis's primary, but only {confirmed} of {self._wait_replicas} "
                f"replica(s) confirmed it within {self._wait_timeout_ms} ms; it may be lost if the "
                "primary fails now (read it back before retrying)"
            )

    async def run_script(self, name: str, *args: Any) -> Any:
        try:
            reply = await self._script[name](self.keys.script_keys, [self.keys.events, *args])
        except REDIS_DOWN as exc:
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
            "HEARTBEAT", worker_id, status.SerializeToString(), fp, "1" if self.in_grace() else "0"
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


def new_epoch() -> str:
    return secrets.token_hex(8)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value

