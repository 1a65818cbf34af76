"""Scoped service keys: what each role may call on a real registry, and `keys create --role`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.common import api_keys, errors
from services.common.registry_client import RegistryClient
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from tests.integration.registry.helpers import register_model
from tests.support.processes import ROOT

MODEL = "roles"

ALL_RPCS = {
    "RegisterModelVersion": lambda c: c.register_model_version(MODEL, 9, "file:///tmp/x.onnx", "0" * 64, "x: 1"),
    "ListModels": lambda c: c.list_models(),
    "GetModel": lambda c: c.get_model(MODEL),
    "SetVersionState": lambda c: c.set_version_state(MODEL, 2, rpb.CANARY),
    "SetTrafficPolicy": lambda c: c.set_weights(MODEL, {"1": 100}),
    "GetTrafficPolicy": lambda c: c.get_traffic_policy(MODEL),
    "RegisterWorker": lambda c: c.register_worker("127.0.0.1:1", ttl_s=2),
    "Heartbeat": lambda c: c.heartbeat("w-nosuchworker", []),
    "DeregisterWorker": lambda c: c.deregister_worker("w-nosuchworker"),
    "ListWorkers": lambda c: c.list_workers(),
    "CreateApiKey": lambda c: c.create_api_key("t"),
    "ListApiKeys": lambda c: c.list_api_keys(),
    "RevokeApiKey": lambda c: c.revoke_api_key("0123456789ab"),
    "WatchRoutingTable": lambda c: anext(aiter(c.watch())),
}


def test_every_rpc_is_covered():
    service = rpb.DESCRIPTOR.services_by_name["Registry"]
    assert set(ALL_RPCS) == {m.name for m in service.methods}


@pytest.fixture
async def client(registry, admin, tmp_path):
    async with RegistryClient(registry.address, admin.key) as client:
        try:
            await client.get_model(MODEL)
        except errors.NotFound:
            await register_model(client, tmp_path, MODEL)
        yield client


@pytest.mark.parametrize("role", ["router", "worker", "client"])
async def test_each_role_calls_exactly_its_methods(client, registry, role):
    created = await client.create_api_key(f"svc-{role}", role=role)
    assert created.key.role == role and not created.key.admin
    allowed = api_keys.REGISTRY_METHODS[role]
    async with RegistryClient(registry.address, created.secret) as scoped:
        for method, call in ALL_RPCS.items():
            try:
                await call(scoped)
            except errors.PermissionDenied as exc:
                assert method not in allowed, f"{role} refused {method}: {exc}"
                assert f"role {role}" in exc.message and method in exc.message, exc.message
            except (errors.NotFound, errors.InvalidArgument, errors.FailedPrecondition):
                assert method in allowed  # got past the role check to the method itself
            else:
                assert method in allowed, f"{role} may call {method}"


async def test_a_router_key_cannot_change_policy(client, registry):
    router = await client.create_api_key("router", role="router")
    before = await client.get_traffic_policy(MODEL)
    async with RegistryClient(registry.address, router.secret) as scoped:
        table = await anext(aiter(scoped.watch()))
        assert MODEL in {m.name for m in table.models}
        with pytest.raises(errors.PermissionDenied, match="role router, which may not call SetTrafficPolicy"):
            await scoped.set_weights(MODEL, {"2": 100})
    assert await client.get_traffic_policy(MODEL) == before


async def test_a_worker_key_registers_and_heartbeats(client, registry):
    worker = await client.create_api_key("worker", role="worker")
    async with RegistryClient(registry.address, worker.secret) as scoped:
        lease = await scoped.register_worker("127.0.0.1:7999", ttl_s=5)
        renewed = await scoped.heartbeat(lease.worker_id, [])
        assert renewed.worker_id == lease.worker_id
        await scoped.deregister_worker(lease.worker_id)
        with pytest.raises(errors.PermissionDenied, match="role worker, which may not call CreateApiKey"):
            await scoped.create_api_key("escalate", role="admin")


async def test_bad_role_requests_are_invalid_argument(client):
    with pytest.raises(errors.InvalidArgument, match="unknown key role 'root'"):
        await client.create_api_key("t", role="root")
    with pytest.raises(errors.InvalidArgument, match="admin is set but role is 'worker'"):
        await client.create_api_key("t", admin=True, role="worker")
    legacy = await client.create_api_key("legacy-admin", admin=True)
    assert legacy.key.role == "admin" and legacy.key.admin


def run_cli(registry, admin, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHUNTER_REGISTRY": registry.address, "SHUNTER_ADMIN_KEY": admin.key}
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=60)


def test_keys_create_role_flag(registry, admin):
    done = run_cli(registry, admin, "keys", "create", "--tenant", "fleet", "--role", "worker")
    assert done.returncode == 0, done.stderr
    assert "for tenant fleet (worker;" in done.stdout and "key: shk_" in done.stdout
    data = run_cli(registry, admin, "keys", "create", "--tenant", "people")
    assert "(data;" in data.stdout
    listed = run_cli(registry, admin, "keys", "list").stdout.splitlines()
    assert listed[0].split()[-1] == "ROLE"
    assert any(line.split()[1] == "fleet" and line.split()[-1] == "worker" for line in listed[1:])
    clash = run_cli(registry, admin, "keys", "create", "--tenant", "x", "--admin", "--role", "router")
    assert clash.returncode == 2 and "--admin and --role router disagree" in clash.stderr
    bogus = run_cli(registry, admin, "keys", "create", "--tenant", "x", "--role", "root")
    assert bogus.returncode == 2 and "invalid choice: 'root'" in bogus.stderr


def test_compose_service_keys_script_makes_each_role_once(registry, admin, tmp_path):
    script = ROOT / "deploy" / "service-keys.sh"
    env = {**os.environ, "SHUNTER_REGISTRY": registry.address, "SHUNTER_ADMIN_KEY": admin.key,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    first = subprocess.run(["sh", str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    keys = {role: (tmp_path / f"{role}.key").read_text().strip() for role in ("worker", "router")}
    assert all(k.startswith("shk_") for k in keys.values())
    assert all((tmp_path / f"{role}.key").stat().st_mode & 0o777 == 0o600 for role in keys)
    again = subprocess.run(["sh", str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and "created" not in again.stdout
    listed = run_cli(registry, admin, "keys", "list", "--json")
    roles = {k["tenant"]: k["role"] for k in json.loads(listed.stdout) if not k.get("revoked")}
    assert roles["shunter-workers"] == "worker" and roles["shunter-routers"] == "router"
