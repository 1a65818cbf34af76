"""Worker leases: register, heartbeat with readiness, expire, deregister."""

from __future__ import annotations

import pytest

from services.common import errors
from services.common.registry_client import RegistryClient
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from tests.integration.registry.helpers import Watcher


def ready(model: str, version: str, is_ready: bool = True, in_flight: int = 0) -> rpb.VersionStatus:
    return rpb.VersionStatus(model=model, version=version, ready=is_ready, in_flight=in_flight)


async def test_lease_lifecycle(registry, admin):
    async with RegistryClient(registry.address, admin.key) as client:
        watcher = Watcher(RegistryClient(registry.address, admin.key))
        lease = await client.register_worker("127.0.0.1:7001", [ready("m", "1", False)], ttl_s=30)
        assert lease.ttl_s == 30 and lease.worker_id
        table = await watcher.wait_revision(client.last_revision)
        (worker,) = [w for w in table.workers if w.worker_id == lease.worker_id]
        assert worker.address == "127.0.0.1:7001" and not worker.versions[0].ready

        # Readiness changes bump the revision (routers must learn them)...
        await client.heartbeat(lease.worker_id, [ready("m", "1")])
        assert client.last_revision
        table = await watcher.wait_revision(client.last_revision)
        assert next(w for w in table.workers if w.worker_id == lease.worker_id).versions[0].ready
        # ...a heartbeat that only renews the lease or reports load does not.
        await client.heartbeat(lease.worker_id, [ready("m", "1", in_flight=7)])
        assert client.last_revision == 0
        (listed,) = [w for w in await client.list_workers() if w.worker_id == lease.worker_id]
        assert listed.versions[0].in_flight == 7  # ListWorkers reads the latest load

        await client.deregister_worker(lease.worker_id)
        table = await watcher.wait_revision(client.last_revision)
        assert lease.worker_id not in {w.worker_id for w in table.workers}
        with pytest.raises(errors.NotFound):
            await client.heartbeat(lease.worker_id, [])
        await watcher.close()
        await watcher.client.close()


async def test_expired_lease_leaves_the_table_and_can_be_renewed(registry, admin):
    async with RegistryClient(registry.address, admin.key) as client:
        watcher = Watcher(RegistryClient(registry.address, admin.key))
        lease = await client.register_worker("127.0.0.1:7002", ttl_s=1)
        await watcher.wait_for(lambda t: lease.worker_id in {w.worker_id for w in t.workers})
        # No heartbeat: the periodic sweep removes the lease and wakes the watchers.
        await watcher.wait_for(lambda t: lease.worker_id not in {w.worker_id for w in t.workers})
        assert lease.worker_id not in {w.worker_id for w in await client.list_workers()}
        with pytest.raises(errors.NotFound, match="register again"):
            await client.heartbeat(lease.worker_id, [])
        again = await client.register_worker("127.0.0.1:7002", ttl_s=30, worker_id=lease.worker_id)
        assert again.worker_id == lease.worker_id
        assert lease.worker_id in {w.worker_id for w in await client.list_workers()}
        await client.deregister_worker(lease.worker_id)
        await watcher.close()
        await watcher.client.close()


async def test_default_ttl_comes_from_the_registry(registry, admin):
    async with RegistryClient(registry.address, admin.key) as client:
        lease = await client.register_worker("127.0.0.1:7003")
        assert lease.ttl_s == 10  # `shunter registry --lease-ttl-s` default
        await client.deregister_worker(lease.worker_id)
        await client.deregister_worker(lease.worker_id)  # idempotent: a second one is fine
