"""Outages of the registry and its Redis, seen by real routers (issues 11.2, 11.7, 12.3).

- A router whose key the registry refuses stops at start-up with exit 2 and says why;
  one that cannot reach the registry yet keeps trying and starts once it answers.
- A registry restarted after its workers' leases expired keeps them (one TTL of grace).
- A router keeps its table when Redis and every registry lost everything, and takes the
  table again once a backup is imported.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest

from services.common.registry_client import RegistryClient
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from tests.integration.registry.conftest import start_registry
from tests.integration.registry.helpers import CONFIG_YAML, make_artifact, register_model, unique
from tests.integration.router.client import Client, auth
from tests.integration.router.cluster import metric, wait_for
from tests.support.processes import ROOT, free_port, start_redis, start_service


def _router(registry: str, key: str, *extra: str):
    return start_service(["router", "--registry", registry, "--port", "0", *extra],
                         env={"SHUNTER_ADMIN_KEY": key})


def _router_exit(registry: str, key: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "router", "--registry", registry, "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**_env(), "SHUNTER_ADMIN_KEY": key},
    )


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


async def test_a_router_with_a_refused_key_exits_2_and_says_why(registry, admin) -> None:
    done = _router_exit(registry.address, "shk_nobody_" + "x" * 30)
    assert done.returncode == 2, done.stderr
    assert "refuses the router's key" in done.stderr and "invalid or revoked" in done.stderr
    async with RegistryClient(registry.address, admin.key) as client:
        data_key = (await client.create_api_key("tenant-r")).secret
    done = _router_exit(registry.address, data_key)
    assert done.returncode == 2 and "data-plane key" in done.stderr, done.stderr


async def test_a_router_started_before_its_registry_starts_once_it_answers(redis_server, admin) -> None:
    port = free_port()

    async def later():
        await asyncio.sleep(2.0)
        return await asyncio.to_thread(start_registry, redis_server, admin, port=port)

    pending = asyncio.create_task(later())
    router = await asyncio.to_thread(_router, f"127.0.0.1:{port}", admin.key)
    registry = await pending
    try:
        assert metric(router.metrics_url, "shunter_router_registry_connected") == 1
        assert metric(router.metrics_url, "shunter_router_routing_table_revision") > 0
    finally:
        router.terminate()
        registry.terminate()


@pytest.mark.parametrize("away", ["registry", "redis"])
async def test_leases_that_expired_during_an_outage_are_kept(away, admin, tmp_path):
    """The registry restarted, or its Redis back after an outage: one lease TTL of grace."""
    from services.worker.cluster import ClusterMember
    from tests.integration.registry.test_cluster_member import FakeHost

    redis_server = start_redis(appendonly=True)  # of its own: no other registry sweeps it
    proc = start_registry(redis_server, admin)
    port = proc.port
    model = unique("grace")
    member = None
    try:
        async with RegistryClient(proc.address, admin.key) as client:
            uri, digest = make_artifact(tmp_path, b"grace")
            await client.register_model_version(model, 1, uri, digest, CONFIG_YAML)
        member = ClusterMember(proc.address, admin.key, [model], FakeHost(), "127.0.0.1:7301", lease_ttl_s=1)
        await member.start()
        async with RegistryClient(proc.address, admin.key) as client:
            await _until(client, lambda t: _worker_ready(t, member.worker_id, model))
        seen: list[rpb.RoutingTable] = []
        if away == "registry":
            proc.kill()
            await asyncio.sleep(3.0)  # three lease TTLs: the lease has expired in Redis
            proc = start_registry(redis_server, admin, port=port)
        async with RegistryClient(proc.address, admin.key) as client:
            async def collect() -> None:
                async for table in client.watch(min_backoff_s=0.05, max_backoff_s=0.2):
                    seen.append(table)

            task = asyncio.create_task(collect())
            if away == "redis":
                await asyncio.sleep(0.5)
                redis_server.kill()
                await asyncio.sleep(3.0)  # the lease expires by Redis's clock meanwhile
                redis_server.start()  # with its data (AOF)
            await asyncio.sleep(3.0)  # several heartbeats after the return
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert seen, "no routing table after the outage"
        missing = [t.revision for t in seen if not _worker_ready(t, member.worker_id, model)]
        assert missing == [], f"tables without the live worker after the outage: {missing}"
    finally:
        if member is not None:
            await member.stop()
        proc.terminate()
        redis_server.kill()


async def test_a_router_keeps_its_table_when_the_registry_and_redis_lost_everything(tmp_path, admin) -> None:
    redis = start_redis(appendonly=False)
    proc = start_registry(redis, admin)
    port, router = proc.port, None
    try:
        async with RegistryClient(proc.address, admin.key) as client:
            await register_model(client, tmp_path, "kept", versions=1)
            data_key = (await client.create_api_key("tenant-k", ["kept"])).secret
            revision = client.last_revision
        router = _router(proc.address, admin.key)
        await asyncio.to_thread(wait_for, lambda: _revision(router) >= revision, 30, "router at the revision")
        backup = tmp_path / "backup.json"
        assert _cli("registry", "export", str(backup), "--redis-url", redis.url).returncode == 0

        proc.kill()
        redis.kill()
        redis.start()  # empty, and no registry remembers
        proc = start_registry(redis, admin, port=port)
        await asyncio.to_thread(
            wait_for, lambda: metric(router.metrics_url, "shunter_router_routing_tables_refused_total") >= 1,
            30, "the router refused the emptied table",
        )
        assert _revision(router) == revision
        assert await _code(router.address, data_key) != grpc.StatusCode.UNAUTHENTICATED
        assert await _code(router.address, "shk_bogus_" + "y" * 30) == grpc.StatusCode.UNAUTHENTICATED

        done = _cli("registry", "import", str(backup), "--redis-url", redis.url)
        assert done.returncode == 0, done.stderr
        await asyncio.to_thread(wait_for, lambda: _revision(router) > revision, 30, "router took the import")
        assert await _code(router.address, data_key) != grpc.StatusCode.UNAUTHENTICATED
    finally:
        if router is not None:
            router.terminate()
        proc.terminate()
        redis.kill()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def _revision(router) -> float:
    return metric(router.metrics_url, "shunter_router_routing_table_revision")


async def _code(address: str, key: str) -> grpc.StatusCode:
    from services.gen.inference import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name="kept")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(b"\0" * 16)
    async with Client(address) as client:
        try:
            await client.stub.ModelInfer(request, metadata=auth(key), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _worker_ready(table: rpb.RoutingTable, worker_id: str, model: str) -> bool:
    return any(w.worker_id == worker_id and any(s.model == model and s.ready for s in w.versions)
               for w in table.workers)


async def _until(client: RegistryClient, check, timeout_s: float = 30.0) -> None:
    async def follow() -> None:
        async for table in client.watch():
            if check(table):
                return

    try:
        await asyncio.wait_for(follow(), timeout_s)
    except TimeoutError:
        pytest.fail(f"the routing table did not show the condition within {timeout_s}s")
