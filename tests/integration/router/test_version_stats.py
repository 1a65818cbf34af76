"""Per-version statistics through a real redis-server: two routers' flushes summed by the
registry's window reader; a router whose Redis is gone keeps counting, drops and says so."""

from __future__ import annotations

import time

import grpc
import pytest
import redis.asyncio as aioredis

from services.common.edge import RpcCall
from services.registry.rollout.window import read_window
from services.router.redis_link import RedisLink
from services.router.version_stats import DROPPED, VersionStats
from tests.support.processes import start_redis


def call(model: str, version: str, code: grpc.StatusCode = grpc.StatusCode.OK, seconds: float = 0.004,
         method: str = "ModelInfer") -> RpcCall:
    rpc = RpcCall("router", method, None)  # type: ignore[arg-type]
    rpc.model, rpc.version, rpc.code, rpc.seconds = model, version, code, seconds
    return rpc


@pytest.fixture
def redis_server():
    server = start_redis()
    yield server
    server.kill()


async def test_two_routers_flush_and_the_registry_reads_the_sum(redis_server) -> None:
    routers = [VersionStats(RedisLink(redis_server.url), "t:") for _ in range(2)]
    started_ms = int(time.time() * 1000)
    for stats in routers:
        for _ in range(30):
            stats.end(call("calc", "1"))
        for _ in range(5):
            stats.end(call("calc", "2", grpc.StatusCode.INTERNAL))
        stats.end(call("calc", "2", seconds=0.2, method="ModelStreamInfer"))
        stats.end(call("calc", "", grpc.StatusCode.NOT_FOUND))  # no version: not counted
        stats.end(call("calc", "1", method="ModelMetadata"))  # not an inference call
    assert [await s.flush() for s in routers] == [36, 36]
    assert await routers[0].flush() == 0  # nothing new since

    client = aioredis.Redis.from_url(redis_server.url)
    try:
        window = await read_window(client, "t:", "calc", ["1", "2", "3"], started_ms - 1000, int(time.time() * 1000))
        ttl = await client.ttl((await client.keys("t:vstats:s:calc:1:*"))[0])
    finally:
        await client.aclose()
    assert window["1"].requests == 60 and window["1"].errors == {} and window["1"].successes == 60
    assert window["2"].requests == 12 and window["2"].errors == {"INTERNAL": 10} and window["2"].successes == 2
    assert 150 <= window["2"].quantile_ms(0.99) <= 250
    assert window["3"].requests == 0
    assert 0 < ttl <= 15 * 60
    for stats in routers:
        await stats.close()


async def test_a_router_without_redis_keeps_counting_and_drops_what_it_cannot_flush(redis_server) -> None:
    link = RedisLink(redis_server.url, timeout_s=0.2)
    stats = VersionStats(link, "t:")
    stats.end(call("calc", "1"))
    assert await stats.flush() == 1
    redis_server.kill()
    before = DROPPED._value.get()
    for _ in range(7):
        stats.end(call("calc", "1"))
    assert await stats.flush() == 0
    assert stats.dropped == 7 and DROPPED._value.get() - before == 7
    # Skipped at once while the link is marked down: no connect timeout per flush.
    stats.end(call("calc", "1"))
    assert await stats.flush() == 0 and stats.dropped == 8
    await stats.close()
    await link.close()
