"""The registry and the router's limiter behind real redis-sentinel processes, across failovers."""

from __future__ import annotations

import asyncio

import pytest

from services.common.registry_client import RegistryClient
from services.router.limiter import RateLimiter
from services.router.redis_link import RedisLink
from tests.integration.registry.helpers import register_model, unique
from tests.integration.registry.replicated import WriteLoad, across_failover, failover_only, lost_writes, start_registry
from tests.support.redis_cluster import cli, start_sentinel


async def test_manual_sentinel_failover_under_write_load_loses_no_acknowledged_write(admin, tmp_path):
    # SENTINEL FAILOVER needs no quorum; the second replica serves the new master at once.
    deploy = start_sentinel(quorum_ready=False, replicas=2)
    registry = start_registry(deploy.url, admin, "--redis-wait-replicas", "1")
    try:
        model = unique("s")
        async with RegistryClient(registry.address, admin.key) as client:
            await register_model(client, tmp_path, model, versions=1)
        old = deploy.master()
        load = WriteLoad(registry.address, admin.key)

        async def fail_over() -> None:
            cli(deploy.sentinels[0].port, "sentinel", "failover", deploy.master_name)
            await asyncio.to_thread(deploy.wait_failover, old)

        await across_failover(load, fail_over)
        assert deploy.master_port() != old.port
        assert await lost_writes(registry.address, admin.key, load.acknowledged) == set()
        async with RegistryClient(registry.address, admin.key) as client:
            assert model in {m.name for m in await client.list_models()}
        # The limiter follows the sentinels to the new master.
        link = RedisLink(deploy.url, timeout_s=2.0)
        try:
            limiter = RateLimiter(link, "shunter:")
            assert [await limiter.acquire("k", per_second=0.5, burst=2) for _ in range(3)][:2] == [0.0, 0.0]
            assert await limiter.acquire("k", per_second=0.5, burst=2) > 0 and limiter.local._tat == {}
        finally:
            await link.close()
    finally:
        registry.terminate()
        deploy.stop()


@pytest.mark.slow
@failover_only
async def test_master_killed_under_write_load_loses_no_acknowledged_write(admin):
    """SIGKILL of the master: the sentinels agree (quorum 2 of 3) and promote the replica;
    with --redis-wait-replicas 1 every acknowledged write is on it."""
    deploy = start_sentinel()
    registry = start_registry(deploy.url, admin, "--redis-wait-replicas", "1")
    try:
        old = deploy.master()
        load = WriteLoad(registry.address, admin.key, writers=8)

        async def kill_master() -> None:
            old.kill()
            await asyncio.to_thread(deploy.wait_failover, old)
            # WAIT 1 refuses writes until the new master has a replica again: the old one, back.
            await asyncio.to_thread(old.start)

        await across_failover(load, kill_master, before=100, after=100)
        assert load.refused > 0
        assert await lost_writes(registry.address, admin.key, load.acknowledged) == set()
    finally:
        registry.terminate()
        deploy.stop()
