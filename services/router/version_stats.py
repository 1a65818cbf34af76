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

Shadow comparisons (``shadow_result``, fed by ``ShadowMirror``) ride the same flush: counts
into their own time-bucketed hashes, and up to ``MAX_SHADOW_SAMPLES`` truncated samples of
disagreements per version into a capped list with a TTL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import Counter

from services.common import background
from services.common import version_windows as vw
from services.common.edge import Interceptor, RpcCall
from services.router.redis_link import OUTAGE_ERRORS, RedisLink
from services.router.shadow import ShadowOutcome

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


class _ShadowCell:
    """One shadow model × version's comparisons since the last flush."""

    __slots__ = ("agree", "argmax_flips", "argmax_rows", "compared", "diffs", "errors", "primary", "samples",
                 "shadow")

    def __init__(self) -> None:
        self.compared = self.agree = self.errors = self.argmax_rows = self.argmax_flips = 0
        self.diffs = [0] * vw.DIFF_BUCKETS
        self.shadow = [0] * vw.BUCKETS
        self.primary = [0] * vw.BUCKETS
        self.samples: list[str] = []


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
        self._shadow: dict[tuple[str, str], _ShadowCell] = {}
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

    def shadow_result(self, model: str, version: str, outcome: ShadowOutcome) -> None:
        """A mirrored request's comparison (``ShadowMirror.on_outcome``)."""
        key = (model, version)
        cell = self._shadow.get(key)
        if cell is None:
            cell = self._shadow[key] = _ShadowCell()
        cell.compared += 1
        if outcome.failed:
            cell.errors += 1
            return
        cell.agree += outcome.agree
        cell.argmax_rows += outcome.argmax_rows
        cell.argmax_flips += outcome.argmax_flips
        cell.diffs[vw.diff_bucket(outcome.max_abs_diff)] += 1
        cell.shadow[vw.bucket_of(outcome.shadow_s * 1000.0)] += 1
        cell.primary[vw.bucket_of(outcome.primary_s * 1000.0)] += 1
        if outcome.sample is not None and len(cell.samples) < vw.MAX_SHADOW_SAMPLES:
            sample = {"at_ms": int(self._clock() * 1000), **outcome.sample}
            cell.samples.append(json.dumps(sample, default=str)[:4096])

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
        shadows, self._shadow = self._shadow, {}
        total = sum(cell.requests for cell in cells.values())
        if (not cells and not shadows) or not self.enabled:
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
                for (model, version), shadow in shadows.items():
                    self._queue_shadow(pipe, model, version, shadow, now)
                await pipe.execute()
        except OUTAGE_ERRORS as exc:
            self._drop(total)
            background.raise_if_cancelled()  # a cancel redis-py turned into ConnectionError
            self._redis.failed(exc)
            return 0
        self._redis.succeeded()
        FLUSHED.inc(total)
        return total

    def _queue_shadow(self, pipe: Any, model: str, version: str, cell: _ShadowCell, now: float) -> None:
        counts = {"n": cell.compared, "agree": cell.agree, "error": cell.errors, "am_rows": cell.argmax_rows,
                  "am_flips": cell.argmax_flips}
        for prefix, buckets in (("d", cell.diffs), ("sl", cell.shadow), ("pl", cell.primary)):
            counts.update({f"{prefix}:{i}": n for i, n in enumerate(buckets) if n})
        for resolution, width, ttl in vw.RESOLUTIONS:
            key = vw.shadow_key(self._prefix, resolution, model, version, int(now // width))
            for name, count in counts.items():
                if count:
                    pipe.hincrby(key, name, count)
            pipe.expire(key, ttl)
        if cell.samples:
            key = vw.shadow_samples_key(self._prefix, model, version)
            pipe.lpush(key, *cell.samples)
            pipe.ltrim(key, 0, vw.MAX_SHADOW_SAMPLES - 1)
            pipe.expire(key, vw.SHADOW_SAMPLE_TTL_S)

    def _drop(self, requests: int) -> None:
        self.dropped += requests
        DROPPED.inc(requests)

    async def close(self) -> None:
        """Stop the flush loop and write what is left (best effort)."""
        await background.stop(self._task)  # bounded: flush() takes a lost cancel for an outage
        self._task = None
        try:
            await self.flush()
        except Exception:
            logger.warning("final version statistics flush failed", exc_info=True)
