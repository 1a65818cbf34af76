"""Rate limits per API key (and per key × model): GCRA in Redis, local when Redis is down.

GCRA (the generic cell rate algorithm) keeps one number per bucket, the theoretical
arrival time (TAT) of the next request. With emission interval ``T = 1 / rate`` a request
at time ``now`` is admitted when ``max(TAT, now) + T - now <= burst * T``, and then
``TAT := max(TAT, now) + T``. So ``burst`` requests pass at once and after that one per
``T``: over any window of ``d`` seconds at most ``burst + rate * d`` are admitted. A
rejected request learns when the next one would pass (the retry-after hint).

In Redis the check-and-set runs as one Lua script using Redis's own clock (``TIME``), so
it is atomic and every router replica agrees on time. When Redis is unreachable each
replica applies the same algorithm locally, which admits up to N × the limit across N
replicas; ``shunter_router_redis_up`` and ``shunter_router_rate_limit_local_total`` say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services.router import metrics
from services.router.redis_link import OUTAGE_ERRORS, RedisLink

# KEYS[1]: bucket. ARGV[1]: emission interval in µs, ARGV[2]: burst.
# Returns 0 when admitted, else the µs until a request would be admitted.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return allow_at - now
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
"""


class LocalGcra:
    """The same GCRA in process memory (the Redis-down fallback, and a reference in tests)."""

    #: Past this many buckets, buckets whose TAT has passed are dropped.
    MAX_BUCKETS = 100_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}

    def acquire(self, bucket: str, per_second: float, burst: int) -> float:
        """0.0 when admitted, else the seconds until a request would be admitted."""
        now = self._clock()
        interval = 1.0 / per_second
        tat = max(self._tat.get(bucket, now), now)
        new_tat = tat + interval
        allow_at = new_tat - burst * interval
        if allow_at - now > 1e-9:  # not a float rounding residue
            return allow_at - now
        if len(self._tat) >= self.MAX_BUCKETS:
            self._tat = {key: value for key, value in self._tat.items() if value > now}
        self._tat[bucket] = new_tat
        return 0.0


def effective_burst(per_second: float, burst: int) -> int:
    """A burst of 0 means "the rate, rounded up" (at least one request)."""
    return burst if burst > 0 else max(1, int(-(-per_second // 1)))


class RateLimiter:
    def __init__(self, link: RedisLink, prefix: str = "shunter:", clock: Callable[[], float] = time.monotonic):
        self._link = link
        self._prefix = f"{prefix}rl:"
        self.local = LocalGcra(clock)
        self._script = link.client.register_script(GCRA_LUA) if link.client is not None else None

    async def acquire(self, bucket: str, per_second: float, burst: int) -> float:
        """0.0 when the request may pass, else the seconds until one would (retry-after)."""
        burst = effective_burst(per_second, burst)
        if self._script is not None and self._link.available():
            interval_us = max(1, round(1_000_000 / per_second))
            try:
                wait_us = await self._script(keys=[self._prefix + bucket], args=[interval_us, burst])
            except OUTAGE_ERRORS as exc:
                self._link.failed(exc)
            else:
                self._link.succeeded()
                return int(wait_us) / 1_000_000
        metrics.RATE_LIMIT_LOCAL.inc()
        return self.local.acquire(bucket, per_second, burst)
