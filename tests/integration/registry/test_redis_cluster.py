"""The registry and the router's Redis helpers on a real Redis Cluster (3 primaries, 3 replicas).

Fast tests share one cluster; the primary-kill test (slow) starts its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.exceptions import NoPermissionError

from services.common import redis_connect
from services.common.registry_client import RegistryClient
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.router.cache import ResponseCache
from services.router.limiter import RateLimiter
from services.router.redis_link import RedisLink
from tests.integration.registry.conftest import AdminKey
from tests.integration.registry.helpers import Watcher, policy_of, register_model, unique
from tests.integration.registry.replicated import WriteLoad, across_failover, failover_only, lost_writes, start_registry
from tests.support.processes import ServiceProcess
from tests.support.redis_cluster import RedisClusterProcesses, cli, start_cluster

REGISTRY_SLOT_KEY = "{shunter:registry}:revision"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterProcesses]:
    deployment = start_cluster()
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
def cluster_registry(cluster: RedisClusterProcesses, admin: AdminKey) -> Iterator[ServiceProcess]:
    proc = start_registry(cluster.url, admin, "--redis-wait-replicas", "1")
    yield proc
    proc.terminate()


async def test_catalogue_leases_and_watch_on_a_cluster(cluster, cluster_registry, admin, tmp_path):
    model = unique("c")
    async with RegistryClient(cluster_registry.address, admin.key) as client:
        watcher = Watcher(RegistryClient(cluster_registry.address, admin.key))
        await register_model(client, tmp_path, model, versions=2)
        await client.set_weights(model, {"1": 70, "2": 30})
        # The watch wake-up (pub/sub through the slot's primary) reaches the watcher.
        table = await watcher.wait_for(lambda t: policy_of(t, model) is not None
                                       and dict(policy_of(t, model).weights) == {"1": 70, "2": 30})
        lease = await client.register_worker("127.0.0.1:1", [rpb.VersionStatus(model=model, version="1", ready=True)])
        await client.heartbeat(lease.worker_id, [rpb.VersionStatus(model=model, version="1", ready=True)])
        assert [w.worker_id for w in await client.list_workers()] == [lease.worker_id]
        await watcher.wait_for(lambda t: t.revision > table.revision and any(
            w.worker_id == lease.worker_id for w in t.workers))
        await client.deregister_worker(lease.worker_id)
        assert await client.list_workers() == []
        await watcher.close()
        await watcher.client.close()
    # Every registry key lives in the one slot of its hash tag, on that slot's primary.
    owner = cluster.node_for_slot_of(REGISTRY_SLOT_KEY)
    slot = cli(owner.port, "cluster", "keyslot", REGISTRY_SLOT_KEY)
    names = cli(owner.port, "cluster", "getkeysinslot", slot, "100").split()
    assert f"{{shunter:registry}}:versions:{model}" in names and REGISTRY_SLOT_KEY in names
    for node in cluster.primaries():
        if node.port != owner.port:
            assert "registry" not in cli(node.port, "--scan", "--pattern", "*registry*")


async def test_rate_limits_and_cache_spread_over_the_cluster(cluster):
    link = RedisLink(cluster.url, timeout_s=2.0)
    try:
        limiter = RateLimiter(link, "shunter:")
        buckets = [f"key-{i}" for i in range(30)]
        for bucket in buckets:
            assert [await limiter.acquire(bucket, per_second=0.5, burst=2) for _ in range(2)] == [0.0, 0.0]
            assert await limiter.acquire(bucket, per_second=0.5, burst=2) > 0  # the third waits
        assert link.available() and limiter.local._tat == {}  # all decided in Redis, none locally
        cache = ResponseCache(link, "shunter:")
        key = cache.key("digits", "1", "ab" * 32)
        await cache.put(key, b"response", ttl_s=30)
        assert await cache.get("digits", key, "", ttl_s=30) == b"response"
    finally:
        await link.close()
    # The per-key buckets are spread over the primaries by the cluster client.
    holding = [n for n in cluster.primaries() if "shunter:rl:" in cli(n.port, "--scan", "--pattern", "shunter:rl:*")]
    assert len(holding) > 1


async def test_manual_failover_under_write_load_loses_no_acknowledged_write(cluster, cluster_registry, admin):
    owner = cluster.node_for_slot_of(REGISTRY_SLOT_KEY)
    replica = cluster.replica_of(owner)
    load = WriteLoad(cluster_registry.address, admin.key)

    async def fail_over() -> None:
        cli(replica.port, "cluster", "failover")
        for _ in range(200):
            if cluster.node_for_slot_of(REGISTRY_SLOT_KEY).port == replica.port:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the replica did not take over the registry's slot")

    await across_failover(load, fail_over)
    assert cluster.node_for_slot_of(REGISTRY_SLOT_KEY).port == replica.port
    assert await lost_writes(cluster_registry.address, admin.key, load.acknowledged) == set()


@pytest.mark.slow
@failover_only
async def test_primary_killed_under_write_load_loses_no_acknowledged_write(admin):
    """SIGKILL of the registry slot's primary: with --redis-wait-replicas 1 every write that
    was acknowledged is on the replica that takes over."""
    own = start_cluster()
    registry = start_registry(own.url, admin, "--redis-wait-replicas", "1")
    try:
        owner = own.node_for_slot_of(REGISTRY_SLOT_KEY)
        load = WriteLoad(registry.address, admin.key, writers=8)

        async def kill_primary() -> None:
            owner.kill()
            await asyncio.to_thread(own.wait_promoted, owner)
            # The promoted replica has no replica of its own, so WAIT 1 refuses every write
            # (UNAVAILABLE) until the old primary comes back and re-joins as its replica.
            await asyncio.sleep(1.0)
            await asyncio.to_thread(owner.start)

        await across_failover(load, kill_primary, before=100, after=100)
        assert load.refused > 0  # the writers did run into the failover
        assert await lost_writes(registry.address, admin.key, load.acknowledged) == set()
        # The limiter keeps working on the cluster after the failover too.
        link = RedisLink(own.url, timeout_s=2.0)
        try:
            limiter = RateLimiter(link, "shunter:")
            waits = [await limiter.acquire(f"after-{i}", per_second=1, burst=1) for i in range(20)]
            assert waits == [0.0] * 20 and limiter.local._tat == {}
        finally:
            await link.close()
    finally:
        registry.terminate()
        own.stop()


def test_a_bad_cluster_url_is_a_usage_error(admin):
    with pytest.raises(RuntimeError, match=r"exited with 2[\s\S]*only database 0"):
        start_registry("redis+cluster://127.0.0.1:7000/2", admin)
    assert redis_connect.is_cluster("redis+cluster://127.0.0.1:7000")


async def test_each_service_works_on_a_cluster_with_its_own_acl_user(admin, tmp_path):
    """The cluster-mode ACL rules (services/cli/up_redis.py): the registry and the router each
    work with their own user on a cluster whose default user is off, and no further."""
    import secrets

    from services.cli import up_redis

    users = up_redis.service_users(cluster=True)
    root = secrets.token_hex(16)
    acl = "".join(u.acl_line() + "\n" for u in users.values()) + f"user default off\nuser root on >{root} ~* &* +@all\n"
    own = start_cluster(acl=acl, auth=("root", root))
    try:
        urls = up_redis.user_urls(own.url, users)
        registry = start_registry(urls["registry"], admin)
        try:
            model = unique("a")
            async with RegistryClient(registry.address, admin.key) as client:
                watcher = Watcher(RegistryClient(registry.address, admin.key))
                await register_model(client, tmp_path, model, versions=1)
                await client.set_weights(model, {"1": 100})
                await watcher.wait_for(lambda t: policy_of(t, model) is not None)
                await watcher.close()
                await watcher.client.close()
        finally:
            registry.terminate()
        link = RedisLink(urls["router"], timeout_s=2.0)
        try:
            limiter = RateLimiter(link, "shunter:")
            assert [await limiter.acquire(f"b{i}", per_second=1, burst=1) for i in range(10)] == [0.0] * 10
            assert limiter.local._tat == {}
            with pytest.raises(NoPermissionError):
                await link.client.get("{shunter:registry}:revision")
        finally:
            await link.close()
    finally:
        own.stop()
