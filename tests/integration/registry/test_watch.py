"""WatchRoutingTable: every change, in order; resume after a registry restart; replicas agree."""

from __future__ import annotations

import pytest

from services.common.errors import Unavailable
from services.common.registry_client import RegistryClient
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from tests.integration.registry.conftest import start_registry
from tests.integration.registry.helpers import Watcher, eventually, policy_of, register_model, unique
from tests.support.processes import free_port


@pytest.fixture(scope="module")
def replica(redis_server, admin):
    proc = start_registry(redis_server, admin)
    yield proc
    proc.terminate()


async def test_watcher_sees_every_change_in_revision_order(registry, replica, admin, tmp_path):
    model = unique()
    async with RegistryClient(registry.address, admin.key) as writer, \
            RegistryClient(replica.address, admin.key) as watch_client:
        await register_model(writer, tmp_path, model, versions=3)
        watcher = Watcher(watch_client)  # on the other replica: woken through Redis pub/sub
        await watcher.wait_revision(writer.last_revision)
        for step, weights in enumerate(({"1": 100}, {"1": 50, "2": 50}, {"2": 100}, {"2": 90, "3": 10})):
            await writer.set_weights(model, weights, fallback_version="2" if step % 2 else "")
            table = await watcher.wait_revision(writer.last_revision)
            assert table.revision == writer.last_revision  # nothing else is writing
            assert dict(policy_of(table, model).weights) == weights
        await writer.set_version_state(model, 1, rpb.ARCHIVED)
        table = await watcher.wait_revision(writer.last_revision)
        versions = next(m for m in table.models if m.name == model).versions
        assert [v.version for v in versions] == ["2", "3"]  # archived versions leave the table
        assert watcher.revisions == sorted(set(watcher.revisions))
        await watcher.close()


async def test_replicas_agree(registry, replica, admin, tmp_path):
    model = unique()
    async with RegistryClient(registry.address, admin.key) as a, RegistryClient(replica.address, admin.key) as b:
        await register_model(a, tmp_path, model, versions=2)
        await a.set_weights(model, {"1": 70, "2": 30}, sticky_header="x-user-id")
        # Reads go to Redis when it answers: the other replica sees the write at once.
        assert await b.get_traffic_policy(model) == await a.get_traffic_policy(model)
        assert await b.get_model(model) == await a.get_model(model)
        created = await a.create_api_key("tenant-a", admin=True)
        async with RegistryClient(replica.address, created.secret) as new_admin:
            assert [k.key_id for k in await new_admin.list_api_keys()] == [
                k.key_id for k in await a.list_api_keys()
            ]
        assert await a.list_models() == await b.list_models()


async def test_restarted_registry_watchers_resume(redis_server, registry, admin, tmp_path):
    model = unique()
    port = free_port()
    restarting = start_registry(redis_server, admin, port=port)
    async with RegistryClient(registry.address, admin.key) as writer, \
            RegistryClient(restarting.address, admin.key) as watch_client:
        await register_model(writer, tmp_path, model, versions=2)
        watcher = Watcher(watch_client)
        await watcher.wait_revision(writer.last_revision)
        restarting.kill()
        await writer.set_weights(model, {"1": 20, "2": 80})
        while_down = writer.last_revision
        with pytest.raises(Unavailable):
            await watch_client.list_models()
        restarting = start_registry(redis_server, admin, port=port)
        try:
            table = await watcher.wait_revision(while_down)
            assert dict(policy_of(table, model).weights) == {"1": 20, "2": 80}
            await writer.set_weights(model, {"2": 100})
            table = await watcher.wait_revision(writer.last_revision)
            assert dict(policy_of(table, model).weights) == {"2": 100}
            assert watcher.revisions == sorted(set(watcher.revisions))
        finally:
            await watcher.close()
            restarting.terminate()


async def test_failover_between_replica_addresses(registry, replica, admin, tmp_path):
    """A client given several addresses keeps watching through the first one's absence."""
    port = free_port()
    async with RegistryClient([f"127.0.0.1:{port}", replica.address], admin.key) as client:
        watcher = Watcher(client)
        async with RegistryClient(registry.address, admin.key) as writer:
            model = unique()
            await register_model(writer, tmp_path, model, versions=1)
            await watcher.wait_revision(writer.last_revision)
        await watcher.close()

        async def read() -> list[rpb.Model] | None:
            try:
                return await client.list_models()
            except Unavailable:  # the dead address: the client moves on to the next one
                return None

        models = await eventually(read, lambda m: m is not None, what="a read via the live replica")
        assert any(m.name == model for m in models)
