"""Redis killed and restarted mid-run (AOF, appendfsync always): no acknowledged write lost."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import Unavailable
from services.common.registry_client import RegistryClient
from tests.integration.registry.helpers import Watcher, eventually, policy_of, register_model, unique

WRITERS = 5


async def test_redis_restart_loses_no_acknowledged_write(redis_server, registry, admin, tmp_path):
    models = [unique(f"r{i}") for i in range(WRITERS)]
    async with RegistryClient(registry.address, admin.key) as setup:
        for model in models:
            await register_model(setup, tmp_path, model, versions=2)
    watcher = Watcher(RegistryClient(registry.address, admin.key))
    stop = asyncio.Event()
    refused = 0

    async def writer(model: str) -> int:
        """Write increasing weights; retry each until acknowledged; return the last acked."""
        nonlocal refused
        last_acked = 0
        weight = 0
        async with RegistryClient(registry.address, admin.key) as client:
            while not stop.is_set() and weight < 99:
                weight += 1
                while True:
                    try:
                        await client.set_weights(model, {"1": weight, "2": 100 - weight})
                        break
                    except Unavailable:
                        refused += 1
                        await asyncio.sleep(0.05)
                last_acked = weight
                await asyncio.sleep(0.01)
        return last_acked

    tasks = [asyncio.create_task(writer(m)) for m in models]
    await asyncio.sleep(0.5)
    redis_server.kill()
    try:
        async with RegistryClient(registry.address, admin.key) as client:
            # While Redis is down: writes are refused with a clear message...
            with pytest.raises(Unavailable, match="Redis"):
                await client.set_weights(models[0], {"1": 100})
            # ...while reads and auth serve the last snapshot.
            assert {m.name for m in await client.list_models()} >= set(models)
            await asyncio.sleep(0.5)
    finally:
        redis_server.start()
    await asyncio.sleep(0.5)
    stop.set()
    last = await asyncio.gather(*tasks)
    assert refused > 0  # the writers did run into the outage

    async with RegistryClient(registry.address, admin.key) as reader:
        for model, weight in zip(models, last, strict=True):
            assert weight > 0
            policy = await reader.get_traffic_policy(model)
            assert dict(policy.weights) == {"1": weight, "2": 100 - weight}, model
        revision = (await anext(aiter(reader.watch()))).revision
    # The watcher recovered and caught up with the final state.
    table = await watcher.wait_revision(revision)
    for model, weight in zip(models, last, strict=True):
        assert dict(policy_of(table, model).weights) == {"1": weight, "2": 100 - weight}
    assert watcher.revisions == sorted(set(watcher.revisions))
    await watcher.close()
    await watcher.client.close()


async def test_registry_started_while_redis_down_serves_once_it_returns(redis_server, registry, admin, tmp_path):
    """The registry keeps serving without Redis and recovers on its own when it comes back."""
    from tests.integration.registry.conftest import start_registry

    model = unique()
    async with RegistryClient(registry.address, admin.key) as setup:
        await register_model(setup, tmp_path, model, versions=1)
    redis_server.kill()
    try:
        proc = start_registry(redis_server, admin)
    finally:
        if redis_server.proc is None and "proc" not in locals():
            redis_server.start()
    try:
        async with RegistryClient(proc.address, admin.key) as client:
            with pytest.raises(Unavailable):
                await client.list_models()
            # The watch stays open and sends nothing until there is a real table to send.
            watcher = Watcher(RegistryClient(proc.address, admin.key))
            await asyncio.sleep(0.5)
            assert watcher.tables == []
            redis_server.start()
            models = await eventually(_list_or_none(client), lambda m: m is not None, what="reads after recovery")
            assert model in {m.name for m in models}
            await watcher.wait_for(lambda t: any(m.name == model for m in t.models))
            await watcher.close()
            await watcher.client.close()
    finally:
        if redis_server.proc is None:
            redis_server.start()
        proc.terminate()


def _list_or_none(client: RegistryClient):
    async def probe():
        try:
            return await client.list_models()
        except Unavailable:
            return None

    return probe


async def test_workers_recover_their_lease_after_an_outage(redis_server, registry, admin, tmp_path):
    """A lease that expired while Redis was down is registered again under the same id."""
    from services.worker.cluster import ClusterMember
    from tests.integration.registry.helpers import CONFIG_YAML, make_artifact
    from tests.integration.registry.test_cluster_member import FakeHost, statuses_of

    model = unique()
    async with RegistryClient(registry.address, admin.key) as client:
        uri, digest = make_artifact(tmp_path, b"w")
        await client.register_model_version(model, 1, uri, digest, CONFIG_YAML)
        member = ClusterMember(registry.address, admin.key, [model], FakeHost(), "127.0.0.1:7200", lease_ttl_s=1)
        await member.start()
        try:
            def ready(workers):
                status = statuses_of(workers, member.worker_id).get(f"{model}/1")
                return status is not None and status.ready

            await eventually(client.list_workers, ready, what="ready before the outage")
            worker_id = member.worker_id
            redis_server.kill()
            await asyncio.sleep(2.0)  # longer than the lease: it has expired once Redis is back
            redis_server.start()
            await eventually(client.list_workers, ready, what="ready again after the outage")
            assert member.worker_id == worker_id
        finally:
            await member.stop()
