"""Faults under load: a worker SIGKILLed, Redis stopped, the registry gone. Each test restores the cluster."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable

import grpc

from tests.integration.router.client import Client, auth, calc_request
from tests.integration.router.cluster import Cluster, metric, wait_for, worker_inferences
from tests.support.processes import start_service


async def load(addresses: list[str], key: str, seconds: float, during: Callable[[], None],
               at: float, concurrency: int = 4) -> Counter:
    """Closed-loop load on every router; ``during()`` runs (in a thread) ``at`` seconds in."""
    outcomes: Counter = Counter()
    details: list[str] = []
    stop_at = time.monotonic() + seconds

    async def loop(address: str, n: int) -> None:
        async with Client(address) as client:
            i = 0
            while time.monotonic() < stop_at:
                i += 1
                request = calc_request(values=(n, i, 0, 1))
                try:
                    await client.stub.ModelInfer(request, metadata=auth(key), timeout=10)
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as err:
                    outcomes[err.code().name] += 1
                    details.append(err.details())

    async def fault() -> None:
        await asyncio.sleep(at)
        await asyncio.to_thread(during)

    await asyncio.gather(fault(), *(loop(a, n) for n, a in enumerate(addresses * concurrency)))
    assert set(outcomes) == {"OK"}, (outcomes, details[:5])
    return outcomes


async def test_sigkill_one_of_two_workers_under_load_fails_no_request(cluster: Cluster):
    victim = cluster.workers[0]
    retries_before = sum(metric(r.metrics_url, "shunter_router_retries_total") for r in cluster.routers)
    outcomes = await load([r.address for r in cluster.routers], cluster.keys["data"], 3.0, victim.kill, at=1.0)
    assert outcomes["OK"] > 0
    retries = sum(metric(r.metrics_url, "shunter_router_retries_total") for r in cluster.routers)
    assert retries > retries_before  # calls that met the dead worker were retried elsewhere
    cluster.workers.remove(victim)
    cluster.add_worker()


async def test_redis_stopped_under_load_still_served(cluster: Cluster):
    cluster.set_policy("calc", {"1": 100}, cache_enabled=True, cache_ttl_s=30)
    router = cluster.routers[0]
    seen_down: list[float] = []

    def outage() -> None:
        cluster.redis.stop()
        wait_for(lambda: metric(router.metrics_url, "shunter_router_redis_up") == 0, 10, "redis_up 0")
        seen_down.append(metric(router.metrics_url, "shunter_router_rate_limit_local_total"))
        time.sleep(1.0)
        cluster.redis.start()

    try:
        await load([r.address for r in cluster.routers], cluster.keys["fast-limit"], 4.0, outage, at=0.5)
        assert seen_down and seen_down[0] > 0  # the local limiter decided while Redis was away
        assert metric(router.metrics_url, "shunter_router_cache_total", model="calc", result="bypass") > 0
        # Redis is back: the next requests use it again.
        async with Client(router.address) as client:
            await client.stub.ModelInfer(calc_request(), metadata=auth(cluster.keys["fast-limit"]))
            await asyncio.sleep(1.1)
            await client.stub.ModelInfer(calc_request(), metadata=auth(cluster.keys["fast-limit"]))
        wait_for(lambda: metric(router.metrics_url, "shunter_router_redis_up") == 1, 10, "redis_up 1")
    finally:
        cluster.set_policy("calc", {"1": 100})


async def test_registry_down_routers_serve_on_last_table(cluster: Cluster):
    port = cluster.registry.port
    cluster.registry.terminate()
    try:
        for router in cluster.routers:
            wait_for(lambda r=router: metric(r.metrics_url, "shunter_router_registry_connected") == 0, 15,
                     "router notices the registry is gone")
            async with Client(router.address) as client:
                for _ in range(5):
                    response = await client.stub.ModelInfer(calc_request(), metadata=auth(cluster.keys["data"]))
                    assert response.model_version == "1"
    finally:
        key_file = cluster.repository.parent / "admin.key"
        cluster.registry = start_service(
            ["registry", "--redis-url", cluster.redis.url, "--admin-key-file", str(key_file), "--port", str(port)]
        )
    for router in cluster.routers:
        wait_for(lambda r=router: metric(r.metrics_url, "shunter_router_registry_connected") == 1, 30,
                 "router reconnects to the registry")


async def test_a_recent_cache_entry_is_served_from_memory_while_redis_is_down(cluster: Cluster):
    cluster.set_policy("calc", {"1": 100}, cache_enabled=True, cache_ttl_s=30)
    router = cluster.routers[0]
    key = auth(cluster.keys["data"])
    hot = calc_request(values=(time.time(), 7.0, 8.0, 9.0))
    try:
        async with Client(router.address) as client:
            first = await client.stub.ModelInfer(hot, metadata=key)  # a miss: stored in Redis and in memory
            cluster.redis.stop()
            calls = sum(worker_inferences(w.metrics_url) for w in cluster.workers)
            hits = metric(router.metrics_url, "shunter_router_cache_total", model="calc", result="hit")
            again = await client.stub.ModelInfer(hot, metadata=key)
            assert again == first
            assert metric(router.metrics_url, "shunter_router_cache_total", model="calc", result="hit") == hits + 1
            served = sum(worker_inferences(w.metrics_url) for w in cluster.workers)
            assert served == calls, "a hit must not reach a worker"
            # Inputs it has not seen still go to a worker, past the unreachable Redis.
            other = await client.stub.ModelInfer(calc_request(values=(1.0, 1.0, 1.0, 1.0)), metadata=key)
            assert other.model_name == "calc"
    finally:
        if cluster.redis.proc is None:
            cluster.redis.start()
        # A rate-limited key makes every router use Redis again (and drop connections the
        # restart broke) before the next test relies on it.
        for each in cluster.routers:
            async with Client(each.address) as client:
                deadline = time.monotonic() + 15
                while metric(each.metrics_url, "shunter_router_redis_up") != 1:
                    assert time.monotonic() < deadline, f"router {each.address} never used Redis again"
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await client.stub.ModelInfer(calc_request(), metadata=auth(cluster.keys["fast-limit"]))
                    await asyncio.sleep(0.3)
        cluster.set_policy("calc", {"1": 100})
