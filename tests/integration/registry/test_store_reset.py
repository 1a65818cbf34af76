"""Redis restarted without its data under a live registry, router and worker (issue 11.2).

The Redis here runs without persistence, so a restart comes back empty. The registry
must write its last snapshot back instead of publishing the empty one: keys keep
authenticating at the router, the worker keeps its models loaded, and the catalogue is
in Redis again.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.cli.up_cmd import register_repository, scan
from services.common import api_keys
from services.common.registry_client import RegistryClient
from tests.integration.router.client import Client, auth, calc_request
from tests.integration.router.cluster import Cluster, metric, wait_for, write_repository
from tests.support.processes import start_redis, start_service


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("store-reset")
    repository = write_repository(tmp / "models")
    redis = start_redis(appendonly=False)
    _, admin_key = api_keys.new_key()
    (tmp / "admin.key").write_text(admin_key)
    registry = start_service(
        ["registry", "--redis-url", redis.url, "--admin-key-file", str(tmp / "admin.key"), "--port", "0"]
    )
    cluster = Cluster(redis=redis, registry=registry, admin_key=admin_key, repository=repository)
    try:
        cluster.admin(lambda c: register_repository(c, repository, scan(repository)))
        cluster.add_worker()
        cluster.add_router()
        cluster.set_policy("calc", {"1": 50, "2": 50})
        cluster.create_key("data")
        yield cluster
    finally:
        cluster.stop()


async def test_a_redis_restart_without_data_wipes_nothing(cluster: Cluster) -> None:
    router, worker = cluster.routers[0], cluster.workers[0]
    key = cluster.keys["data"]
    revision_before = metric(router.metrics_url, "shunter_router_routing_table_revision")
    failures: list[str] = []
    served = 0
    stop = asyncio.Event()

    async def load() -> None:
        nonlocal served
        async with Client(router.address) as client:
            while not stop.is_set():
                try:
                    await client.stub.ModelInfer(calc_request(), metadata=auth(key), timeout=10)
                    served += 1
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")
                await asyncio.sleep(0.01)

    task = asyncio.create_task(load())
    try:
        await asyncio.sleep(0.5)
        cluster.redis.kill()
        cluster.redis.start()  # no AOF, no RDB: it comes back empty
        await asyncio.to_thread(
            wait_for, lambda: metric(cluster.registry.metrics_url, "shunter_registry_store_resets_total") >= 1,
            30, "the registry restored its snapshot",
        )
        await asyncio.to_thread(
            wait_for,
            lambda: metric(router.metrics_url, "shunter_router_routing_table_revision") > revision_before,
            30, "the router took the restored table",
        )
        await asyncio.sleep(1.0)  # keep the load on over the restored table for a moment
    finally:
        stop.set()
        await task
    assert served > 0
    assert failures == [], f"{len(failures)} requests failed across the reset, e.g. {failures[:3]}"

    # The state is back in Redis: a fresh client sees models, policy and keys.
    async with RegistryClient(cluster.registry.address, cluster.admin_key) as client:
        models = {m.name: m for m in await client.list_models()}
        assert {v.version for v in models["calc"].versions} == {"1", "2", "3"}
        assert dict(models["calc"].policy.weights) == {"1": 50, "2": 50}
        assert cluster.key_ids["data"] in {k.key_id for k in await client.list_api_keys()}
        workers = await client.list_workers()
        assert any(s.ready for w in workers for s in w.versions if s.model == "calc")
    assert "no longer assigned" not in worker.logs(), worker.logs()
    assert "lost data" in cluster.registry.logs()


def _cli(*args: str) -> tuple[int, str, str]:
    import subprocess
    import sys

    from tests.support.processes import ROOT

    done = subprocess.run([sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


async def test_export_and_import_bring_a_wiped_store_back(tmp_path) -> None:
    """Redis and registry both lost (nothing in memory): the backup file restores the state."""
    import json

    from tests.integration.registry.helpers import register_model

    redis = start_redis(appendonly=False)
    _, admin_key = api_keys.new_key()
    (tmp_path / "admin.key").write_text(admin_key)

    def registry():
        return start_service(
            ["registry", "--redis-url", redis.url, "--admin-key-file", str(tmp_path / "admin.key"), "--port", "0"]
        )

    proc = registry()
    try:
        async with RegistryClient(proc.address, admin_key) as client:
            await register_model(client, tmp_path / "art", "kept", versions=2)
            await client.set_weights("kept", {"1": 30, "2": 70})
            created = await client.create_api_key("tenant-a", ["kept"])
        backup = tmp_path / "backup.json"
        rc, out, err = _cli("registry", "export", str(backup), "--redis-url", redis.url)
        assert rc == 0, err
        assert "1 models, 2 versions" in out and str(backup) in out
        exported = json.loads(backup.read_text())
        assert "secret" not in backup.read_text().replace("secret_sha256", "")

        proc.terminate()
        redis.kill()
        redis.start()  # empty

        # A bad file is refused with exit 2 and a message naming the problem; nothing is written.
        (tmp_path / "junk.json").write_text("{not json")
        rc, _, err = _cli("registry", "import", str(tmp_path / "junk.json"), "--redis-url", redis.url)
        assert rc == 2 and "is not JSON" in err
        broken = json.loads(json.dumps(exported))
        broken["models"][0]["versions"][1]["sha256"] = "xyz"
        (tmp_path / "broken.json").write_text(json.dumps(broken))
        rc, _, err = _cli("registry", "import", str(tmp_path / "broken.json"), "--redis-url", redis.url)
        assert rc == 2 and "model 'kept' version 2" in err and "sha256" in err, err
        rc, out, _ = _cli("registry", "export", str(tmp_path / "empty.json"), "--redis-url", redis.url)
        assert rc == 0 and "0 models, 0 versions, 0 keys" in out

        rc, out, err = _cli("registry", "import", str(backup), "--redis-url", redis.url)
        assert rc == 0, err
        assert "imported 1 models, 2 versions" in out
        proc = registry()
        async with RegistryClient(proc.address, admin_key) as client:
            model = await client.get_model("kept")
            assert [v.sha256 for v in model.versions] == [v["sha256"] for v in exported["models"][0]["versions"]]
            assert dict(model.policy.weights) == {"1": 30, "2": 70}
            assert created.key.key_id in {k.key_id for k in await client.list_api_keys()}
            assert (await anext(aiter(client.watch()))).revision > exported["revision"]

            # Import is all or nothing: one clashing version refuses the new model beside it too.
            clash = json.loads(json.dumps(exported))
            clash["models"][0]["versions"][0]["sha256"] = "0" * 64
            fresh = json.loads(json.dumps(clash["models"][0]))
            fresh["name"] = "newcomer"
            for version in fresh["versions"]:
                version["model"] = "newcomer"
            fresh["policy"]["model"] = "newcomer"
            clash["models"].append(fresh)
            (tmp_path / "clash.json").write_text(json.dumps(clash))
            rc, _, err = _cli("registry", "import", str(tmp_path / "clash.json"), "--redis-url", redis.url)
            assert rc == 1 and "kept version 1" in err and "nothing imported" in err, err
            assert "newcomer" not in {m.name for m in await client.list_models()}
            # The same file again is harmless.
            rc, out, err = _cli("registry", "import", str(backup), "--redis-url", redis.url)
            assert rc == 0 and "(0 versions/keys were missing)" in out, err
    finally:
        proc.terminate()
        redis.kill()
