"""Live per-version statistics, shared by every router through Redis (issue 14 §1).

``VersionStats`` is an edge interceptor: after every inference call (a ModelInfer call or
one ModelStreamInfer message) that the request path labelled with a model and version, it
adds one to that version's request count, to its error count for the final status code,
or to its latency bucket. The hot path only touches a dict in memory.

About once a second ``flush`` swaps the counts out and adds them to Redis in one
pipelined (non-transactional) write: ``HINCRBY`` into the time-bucketed hashes of
``services.common.version_windows`` plus an ``EXPIRE`` each, so any registry replica can
sum any window across all routers. A router that cannot reach Redis keeps serving: the
counts of that flush are dropped and counted (``shunter_router_version_stats_dropped``),
and the link is marked down like any other Redis failure (``RedisLink.failed``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc
from prometheus_client import Counter

from services.common import version_windows as vw
from services.common.edge import Interceptor, RpcCall
from services.router.redis_link import OUTAGE_ERRORS, RedisLink

logger = logging.getLogger(__name__)

#: Methods whose calls are inference requests for one model version.
INFERENCE_METHODS = frozenset({"ModelInfer", "ModelStreamInfer"})

FLUSHED = Counter(
    "shunter_router_version_stats_flushed",
    "Requests whose per-version statistics reached Redis (rollout gates and reports read them).",
)
DROPPED = Counter(
    "shunter_router_version_stats_dropped",
    "Requests whose per-version statistics were dropped because Redis was unreachable.",
)


class _Cell:
    """One model × version's counts since the last flush."""

    __slots__ = ("buckets", "errors", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors: dict[str, int] = {}
        self.buckets = [0] * vw.BUCKETS


class VersionStats(Interceptor):
    """Counts per model × version in memory; ``run`` flushes them to Redis every interval."""

    def __init__(
        self,
        redis: RedisLink,
        key_prefix: str,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._interval_s = interval_s
        #: Wall clock: slots must line up across routers (and the registry reading them).
        self._clock = clock
        self._cells: dict[tuple[str, str], _Cell] = {}
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return self._redis.client is not None and self._interval_s > 0

    # -- the hot path -----------------------------------------------------------------

    def end(self, call: RpcCall) -> None:
        if not call.version or call.method not in INFERENCE_METHODS:
            return
        key = (call.model, call.version)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = _Cell()
        cell.requests += 1
        code = call.code
        if code is grpc.StatusCode.OK:
            cell.buckets[vw.bucket_of(call.seconds * 1000.0)] += 1
        else:
            name = code.name
            cell.errors[name] = cell.errors.get(name, 0) + 1

    # -- flushing ---------------------------------------------------------------------

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="router-version-stats")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.flush()
            except Exception:  # a bug here must not stop statistics for good
                logger.exception("version statistics flush failed")

    async def flush(self) -> int:
        """Write the counts gathered since the last flush; -> requests written (0 if dropped)."""
        cells, self._cells = self._cells, {}
        total = sum(cell.requests for cell in cells.values())
        if not cells or not self.enabled:
            return 0
        if not self._redis.available():
            self._drop(total)
            return 0
        now = self._clock()
        client = self._redis.client
        assert client is not None
        try:
            async with client.pipeline(transaction=False) as pipe:
                for (model, version), cell in cells.items():
                    for resolution, width, ttl in vw.RESOLUTIONS:
                        key = vw.slot_key(self._prefix, resolution, model, version, int(now // width))
                        pipe.hincrby(key, "n", cell.requests)
                        for code, count in cell.errors.items():
                            pipe.hincrby(key, f"e:{code}", count)
                        for index, count in enumerate(cell.buckets):
                            if count:
                                pipe.hincrby(key, f"b:{index}", count)
                        pipe.expire(key, ttl)
                await pipe.execute()
        except OUTAGE_ERRORS as exc:
            self._redis.failed(exc)
            self._drop(total)
            return 0
        self._redis.succeeded()
        FLUSHED.inc(total)
        return total

    def _drop(self, requests: int) -> None:
        self.dropped += requests
        DROPPED.inc(requests)

    async def close(self) -> None:
        """Stop the flush loop and write what is left (best effort)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.flush()
        except Exception:
            logger.warning("final version statistics flush failed", exc_info=True)
