"""The rate limiter against a real Redis: one bucket shared by replicas, and the local fallback."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.router import metrics
from services.router.limiter import RateLimiter
from services.router.redis_link import RedisLink
from tests.support.processes import start_redis


@pytest.fixture(scope="module")
def redis_server():
    server = start_redis()
    yield server
    server.kill()


async def test_redis_gcra_shared_by_two_replicas(redis_server):
    links = [RedisLink(redis_server.url), RedisLink(redis_server.url)]
    limiters = [RateLimiter(link, "t1:") for link in links]
    try:
        decisions = [await limiters[i % 2].acquire("key-a", 1.0, 4) for i in range(10)]
        # One bucket in Redis: the burst of 4 is shared, whichever replica asks.
        assert [d == 0 for d in decisions] == [True] * 4 + [False] * 6
        assert all(0 < d <= 1.0 for d in decisions[4:])
        assert await limiters[0].acquire("key-b", 1.0, 4) == 0  # another bucket
    finally:
        for link in links:
            await link.close()


async def test_redis_gcra_bound_over_a_window(redis_server):
    link = RedisLink(redis_server.url)
    limiter = RateLimiter(link, "t2:")
    try:
        start = time.monotonic()
        admitted = sum([await limiter.acquire("k", 100.0, 10) == 0 for _ in range(400)])
        elapsed = time.monotonic() - start
        assert 10 <= admitted <= 10 + 100 * elapsed + 1
    finally:
        await link.close()


async def test_redis_down_falls_back_to_local_and_recovers():
    server = start_redis()
    link = RedisLink(server.url, timeout_s=0.2, retry_after_s=0.05)
    limiter = RateLimiter(link, "t3:")
    try:
        assert await limiter.acquire("k", 1.0, 2) == 0
        assert metrics.REDIS_UP._value.get() == 1
        server.kill()
        local_before = metrics.RATE_LIMIT_LOCAL._value.get()
        # The local limiter starts its own bucket: the burst of 2, then a wait.
        got = [await limiter.acquire("k", 1.0, 2) for _ in range(3)]
        assert [g == 0 for g in got] == [True, True, False]
        assert metrics.REDIS_UP._value.get() == 0
        assert metrics.RATE_LIMIT_LOCAL._value.get() >= local_before + 3
        server.start()
        await asyncio.sleep(0.06)
        assert await limiter.acquire("fresh", 1.0, 2) == 0
        assert metrics.REDIS_UP._value.get() == 1
    finally:
        await link.close()
        server.kill()
