"""`shunter up`'s Redis: no anonymous access, one ACL user per service, secrets kept off `ps`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import redis

from services.common.registry_client import RegistryClient
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from tests.integration.router.client import Client, auth, calc_request
from tests.integration.router.cluster import write_repository
from tests.integration.test_up_start import _descendants
from tests.support.processes import ROOT


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines())


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    root = tmp_path_factory.mktemp("up-acl")
    repository = write_repository(root / "models")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--model-repository", str(repository),
         "--workers", "1", "--port", "0", "--run-dir", str(root / "run")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        for line in iter(proc.stdout.readline, ""):
            if line.startswith("# Ctrl-C"):
                break
        assert proc.poll() is None, "shunter up did not come up"
        yield proc, root / "run"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_redis_refuses_anonymous_clients_and_scopes_each_user(up):
    _proc, run = up
    urls = dict(line.split("=", 1) for line in (run / "redis-urls").read_text().splitlines())
    assert set(urls) == {"registry", "router", "admin"}
    for name in ("redis-urls", "redis.acl", "env"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o600, name
    admin = redis.Redis.from_url(urls["admin"])
    port = admin.connection_pool.connection_kwargs["port"]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port, retry=None).ping()
    assert _env_file(run / "env")["SHUNTER_REDIS_URL"] == urls["admin"]
    router = redis.Redis.from_url(urls["router"])
    registry = redis.Redis.from_url(urls["registry"])
    assert int(registry.get("shunter:registry:revision")) > 0
    with pytest.raises(redis.exceptions.NoPermissionError):
        router.get("shunter:registry:revision")  # the router cannot read or forge registry state
    with pytest.raises(redis.exceptions.NoPermissionError):
        router.hset("shunter:registry:keys", "forged", b"admin")
    with pytest.raises(redis.exceptions.NoPermissionError):
        registry.get("shunter:rl:anything")
    for user in (router, registry):
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.flushall()
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.config_get("*")
    # The ACL file holds hashes only.
    acl = (run / "redis.acl").read_text()
    assert all(url.rsplit("@", 1)[0].rsplit(":", 1)[1] not in acl for url in urls.values())


def test_no_password_on_any_command_line(up):
    proc, run = up
    urls = dict(line.split("=", 1) for line in (run / "redis-urls").read_text().splitlines())
    secrets = [url.rsplit("@", 1)[0].rsplit(":", 1)[1] for url in urls.values()]
    lines = []
    for pid in _descendants(proc.pid) | {proc.pid}:
        with contextlib.suppress(OSError):
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
    assert len(lines) >= 5 and any("redis-server" in line for line in lines)
    assert not [line for line in lines for secret in secrets if secret in line]


async def test_router_limits_and_caches_through_its_own_user(up):
    _proc, run = up
    env = _env_file(run / "env")
    admin_redis = redis.Redis.from_url(env["SHUNTER_REDIS_URL"])
    async with RegistryClient(env["SHUNTER_REGISTRY"], env["SHUNTER_ADMIN_KEY"]) as registry:
        policy = await registry.get_traffic_policy("calc")
        policy.cache_enabled, policy.cache_ttl_s = True, 60
        await registry.set_traffic_policy(policy)
        # Made after the policy: a router that knows the key knows the policy too.
        limited = (await registry.create_api_key("acl", rate=rpb.RateLimit(per_second=0.1, burst=2))).secret
    async with Client(env["SHUNTER_ROUTER"]) as client:
        deadline = time.monotonic() + 30
        while True:  # until the router's key table holds the new key
            try:
                await client.stub.ModelInfer(calc_request((1, 1, 1, 1)), metadata=auth(limited))
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED and time.monotonic() < deadline
                await asyncio.sleep(0.2)
        await client.stub.ModelInfer(calc_request((2, 2, 2, 2)), metadata=auth(limited))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.stub.ModelInfer(calc_request((3, 3, 3, 3)), metadata=auth(limited))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The bucket and the cached responses are in Redis: the router's user wrote them.
    assert list(admin_redis.scan_iter("shunter:rl:*"))
    deadline = time.monotonic() + 10  # the cache is filled after the response is sent
    while not list(admin_redis.scan_iter("shunter:cache:*")):
        assert time.monotonic() < deadline, "no cache entry in Redis"
        await asyncio.sleep(0.1)


def test_a_bad_redis_url_is_refused_before_anything_starts(tmp_path):
    from tests.integration.test_up_start import run_up

    repository = write_repository(tmp_path / "models")
    done = run_up(repository, tmp_path / "run", "--port", "0", "--redis-url", "redis+sentinel://127.0.0.1:26379")
    assert done.returncode == 2, done.stderr
    assert "names no master" in done.stderr and "nothing was started" in done.stderr
    assert not list((tmp_path / "run").glob("*.log"))
    router = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "router", "--registry", "127.0.0.1:1", "--admin-key", "k" * 20,
         "--redis-url", "redis://:hunter2@h:1/0?tls=yes"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert router.returncode == 2 and "unknown parameter 'tls'" in router.stderr
    assert "hunter2" not in router.stderr
