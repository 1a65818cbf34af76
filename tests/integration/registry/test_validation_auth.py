"""Every invalid admin input is INVALID_ARGUMENT naming the problem; keys and secrets."""

from __future__ import annotations

import asyncio
import secrets
import urllib.request
from pathlib import Path

import pytest
import redis

from services.common import errors
from services.common.registry_client import RegistryClient
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from tests.integration.registry.helpers import CONFIG_YAML, make_artifact

MODEL = "val"
SHA = "0" * 64
URI = "file:///tmp/model.onnx"


@pytest.fixture
async def client(registry, admin, tmp_path_factory):
    async with RegistryClient(registry.address, admin.key) as client:
        try:
            await client.get_model(MODEL)
        except errors.NotFound:
            base = tmp_path_factory.mktemp("val")
            for version in (1, 2, 3, 4):
                uri, digest = make_artifact(base / str(version), f"v{version}".encode())
                await client.register_model_version(MODEL, version, uri, digest, CONFIG_YAML)
            await client.set_version_state(MODEL, 4, rpb.ARCHIVED)
            await client.set_weights(MODEL, {"1": 90, "2": 10}, shadow_version="3")
        yield client


def register(**overrides):
    fields = dict(model=MODEL, version="9", artifact_uri=URI, sha256=SHA, config_yaml=CONFIG_YAML)
    fields.update(overrides)
    return lambda c: c.register_model_version(**fields)


def policy(weights, **fields):
    return lambda c: c.set_weights(MODEL, weights, **fields)


def worker(**fields):
    fields.setdefault("address", "127.0.0.1:9000")
    return lambda c: c.register_worker(**fields)


def key(tenant="t", models=(), rate=None):
    return lambda c: c.create_api_key(tenant, models, rate=rate)


INVALID = {
    "model name uppercase": (register(model="Digits"), "model name 'Digits' is not well-formed"),
    "model name empty": (register(model=""), "model name is empty"),
    "model name slash": (register(model="a/b"), "model name 'a/b'"),
    "version zero": (register(version="0"), "version '0' is not a positive integer"),
    "version word": (register(version="latest"), "version 'latest'"),
    "version leading zero": (register(version="01"), "version '01'"),
    "artifact empty": (register(artifact_uri=""), "artifact_uri is empty"),
    "artifact not file": (register(artifact_uri="s3://bucket/m"), "artifact_uri 's3://bucket/m'"),
    "artifact relative": (register(artifact_uri="model.onnx"), "absolute file:// URI"),
    "sha256 short": (register(sha256="abc"), "sha256 'abc'"),
    "config empty": (register(config_yaml=""), "config_yaml is empty"),
    "config unknown key": (register(config_yaml=CONFIG_YAML + "colour: red\n"), "unknown key 'colour'"),
    "config bad datatype": (
        register(config_yaml=CONFIG_YAML.replace("FP32, shape: [4]", "FP33, shape: [4]")),
        "key 'inputs.0.datatype'",
    ),
    "config not yaml": (register(config_yaml="backend: [onnx"), "not valid YAML"),
    "state unknown": (register(state=42), "state 42"),
    "set-state unspecified": (lambda c: c.set_version_state(MODEL, 2, 0), "state 0"),
    "archive weighted": (lambda c: c.set_version_state(MODEL, 1, rpb.ARCHIVED), "still carries traffic (weight 90)"),
    "archive shadow": (lambda c: c.set_version_state(MODEL, 3, rpb.ARCHIVED), "still carries traffic (shadow)"),
    "weights sum 90": (policy({"1": 50, "2": 40}), "weights must sum to 100, got 90"),
    "weights sum 110": (policy({"1": 60, "2": 50}), "got 110"),
    "weights empty": (policy({}), "weights must sum to 100, got 0"),
    "weight over 100": (policy({"1": 150}), "weight 150 of version 1 is over 100"),
    "weight unknown version": (policy({"1": 50, "9": 50}), "weighted version 9 of model 'val' is not registered"),
    "weight archived version": (policy({"1": 50, "4": 50}), "weighted version 4 of model 'val' is archived"),
    "weight bad version": (policy({"one": 100}), "weighted version 'one' is not a positive integer"),
    "shadow weighted": (policy({"1": 50, "2": 50}, shadow_version="2"), "shadow version 2 also has weight 50"),
    "shadow unknown": (policy({"1": 100}, shadow_version="8"), "shadow version 8 of model 'val' is not registered"),
    "shadow archived": (policy({"1": 100}, shadow_version="4"), "shadow version 4 of model 'val' is archived"),
    "fallback unknown": (policy({"1": 100}, fallback_version="7"), "fallback version 7"),
    "sticky header uppercase": (policy({"1": 100}, sticky_header="X-User"), "sticky_header 'X-User'"),
    "sticky header reserved": (policy({"1": 100}, sticky_header="authorization"), "is reserved"),
    "cache without ttl": (policy({"1": 100}, cache_enabled=True), "cache_ttl_s must be between 1"),
    "cache ttl while off": (policy({"1": 100}, cache_ttl_s=5), "cache_ttl_s is set but cache_enabled is false"),
    "policy model name": (lambda c: c.set_weights("Bad Name", {"1": 100}), "model name 'Bad Name'"),
    "worker address": (worker(address="no-port"), "worker address 'no-port' is not HOST:PORT"),
    "worker port": (worker(address="h:99999"), "is not HOST:PORT"),
    "worker ttl": (worker(ttl_s=100000), "ttl_s 100000 is over"),
    "worker id": (worker(worker_id="bad id!"), "worker_id 'bad id!'"),
    "worker status model": (
        worker(versions=[rpb.VersionStatus(model="BAD", version="1")]), "model name in a version status 'BAD'"
    ),
    "worker status version": (
        worker(versions=[rpb.VersionStatus(model="val", version="x")]), "version in a version status 'x'"
    ),
    "heartbeat id": (lambda c: c.heartbeat("", []), "worker_id ''"),
    "key tenant empty": (key(tenant=""), "tenant is empty"),
    "key tenant malformed": (key(tenant="Acme Corp"), "tenant 'Acme Corp'"),
    "key model": (key(models=["ok", "No!"]), "model name in the key's models 'No!'"),
    "key rate negative": (key(rate=rpb.RateLimit(per_second=-1)), "rate per_second -1.0"),
    "key rate infinite": (key(rate=rpb.RateLimit(per_second=float("inf"))), "must be a finite number"),
    "key burst alone": (key(rate=rpb.RateLimit(burst=5)), "burst is set but per_second is 0"),
    "revoke key id": (lambda c: c.revoke_api_key("no such/id"), "key id 'no such/id'"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
async def test_invalid_input_is_invalid_argument_naming_the_problem(client, case):
    call, message = INVALID[case]
    with pytest.raises(errors.InvalidArgument) as raised:
        await call(client)
    assert message in raised.value.message


NOT_FOUND = {
    "get model": (lambda c: c.get_model("nope"), "model 'nope' is not registered"),
    "get policy": (lambda c: c.get_traffic_policy("nope"), "model 'nope' is not registered"),
    "set policy": (lambda c: c.set_weights("nope", {"1": 100}), "model 'nope' is not registered"),
    "state of unknown model": (lambda c: c.set_version_state("nope", 1, rpb.CANARY), "model 'nope'"),
    "state of unknown version": (lambda c: c.set_version_state(MODEL, 9, rpb.CANARY), "version 9 of model 'val'"),
    "revoke unknown key": (lambda c: c.revoke_api_key("0123456789ab"), "key '0123456789ab' does not exist"),
    "heartbeat unknown worker": (lambda c: c.heartbeat("w-nobody", []), "worker w-nobody has no lease"),
}


@pytest.mark.parametrize("case", sorted(NOT_FOUND))
async def test_unknown_things_are_not_found(client, case):
    call, message = NOT_FOUND[case]
    with pytest.raises(errors.NotFound) as raised:
        await call(client)
    assert message in raised.value.message


async def test_versions_are_immutable(client):
    with pytest.raises(errors.AlreadyExists, match="version 1 of model 'val' is already registered"):
        await client.register_model_version(MODEL, 1, URI, SHA, CONFIG_YAML)


async def test_first_version_takes_all_traffic_and_registration_records_config(client, tmp_path):
    uri, digest = make_artifact(tmp_path, b"fresh")
    version = await client.register_model_version("fresh", 1, uri, digest, CONFIG_YAML, rpb.CANARY)
    # States follow traffic: the first version takes all of it, so it is production.
    assert (version.backend, version.state, version.sha256) == ("onnx", rpb.PRODUCTION, digest)
    assert [(t.name, t.datatype, list(t.shape)) for t in version.signature.inputs] == [("x", "FP32", [4])]
    assert version.signature.max_batch_size == 8
    assert version.batching.enabled and list(version.batching.preferred_batch_sizes) == [4, 8]
    assert version.creator.startswith("boot-") and version.created_at_ms > 0
    assert dict((await client.get_traffic_policy("fresh")).weights) == {"1": 100}


# ---- auth ------------------------------------------------------------------------------------

ALL_RPCS = {
    "RegisterModelVersion": lambda c: c.register_model_version(MODEL, 9, URI, SHA, CONFIG_YAML),
    "ListModels": lambda c: c.list_models(),
    "GetModel": lambda c: c.get_model(MODEL),
    "SetVersionState": lambda c: c.set_version_state(MODEL, 2, rpb.CANARY),
    "SetTrafficPolicy": lambda c: c.set_weights(MODEL, {"1": 100}),
    "GetTrafficPolicy": lambda c: c.get_traffic_policy(MODEL),
    "RegisterWorker": lambda c: c.register_worker("127.0.0.1:1"),
    "Heartbeat": lambda c: c.heartbeat("w-x", []),
    "DeregisterWorker": lambda c: c.deregister_worker("w-x"),
    "ListWorkers": lambda c: c.list_workers(),
    "CreateApiKey": lambda c: c.create_api_key("t", admin=True),
    "ListApiKeys": lambda c: c.list_api_keys(),
    "RevokeApiKey": lambda c: c.revoke_api_key("0123456789ab"),
    "WatchRoutingTable": lambda c: anext(aiter(c.watch())),
}


def test_every_rpc_is_covered():
    service = rpb.DESCRIPTOR.services_by_name["Registry"]
    assert set(ALL_RPCS) == {m.name for m in service.methods}


async def test_data_keys_cannot_call_admin_rpcs(client, registry):
    data = await client.create_api_key("tenant-data", [MODEL], rate=rpb.RateLimit(per_second=10))
    async with RegistryClient(registry.address, data.secret) as data_client:
        for name, call in ALL_RPCS.items():
            with pytest.raises(errors.PermissionDenied, match="data-plane key"):
                await call(data_client)
            assert name


@pytest.mark.parametrize("key", [None, "", "shk_0123456789ab_notarealsecretnotarealsecret", "garbage"])
async def test_missing_or_invalid_keys_are_unauthenticated(registry, key):
    async with RegistryClient(registry.address, key) as anonymous:
        for call in (ALL_RPCS["ListModels"], ALL_RPCS["SetTrafficPolicy"], ALL_RPCS["WatchRoutingTable"]):
            with pytest.raises(errors.Unauthenticated):
                await call(anonymous)


async def test_revoked_keys_stop_working_at_once(client, registry):
    created = await client.create_api_key("ops", admin=True)
    async with RegistryClient(registry.address, created.secret) as ops:
        assert await ops.list_models()
        await client.revoke_api_key(created.key.key_id)
        with pytest.raises(errors.Unauthenticated, match="revoked"):
            await ops.list_models()
    listed = {k.key_id: k for k in await client.list_api_keys()}
    assert listed[created.key.key_id].revoked
    table = await anext(aiter(client.watch()))
    assert created.key.key_id not in {k.key_id for k in table.keys}  # only active keys are routed


async def test_no_secret_in_redis_or_logs(client, registry, redis_server, admin):
    created = [
        await client.create_api_key("tenant-a", [MODEL]),
        await client.create_api_key("tenant-b", admin=True),
    ]
    secrets_ = [admin.key, *(c.secret for c in created)]
    for c in created:
        assert c.secret.startswith(f"shk_{c.key.key_id}_")
        assert c.key.secret_sha256 and c.secret not in str(c.key)
    # Use each key once, and present a wrong one, so they pass through every code path.
    for secret in (*secrets_, "shk_0123456789ab_wrongwrongwrongwrongwrong"):
        async with RegistryClient(registry.address, secret) as other:
            try:
                await other.list_api_keys()
            except (errors.PermissionDenied, errors.Unauthenticated):
                pass
    listed = await client.list_api_keys()
    assert all(s not in str(listed) for s in secrets_)

    r = redis.Redis.from_url(redis_server.url)
    dump = bytearray()
    for name in r.scan_iter(count=1000):
        kind = r.type(name)
        dump += name
        if kind == b"string":
            dump += r.get(name) or b""
        elif kind == b"hash":
            for k, v in r.hgetall(name).items():
                dump += k + v
        elif kind == b"set":
            dump += b"".join(r.smembers(name))
        elif kind == b"zset":
            dump += b"".join(m for m, _ in r.zrange(name, 0, -1, withscores=True))
    r.close()
    files = _read_tree(redis_server.data_dir)
    logs = registry.logs() + "\n".join(registry.stdout_lines)
    assert "registered" in logs or "created key" in logs  # the log is really being captured
    for secret in secrets_:
        assert secret.encode() not in dump
        assert secret.encode() not in files  # the AOF on disk too
        assert secret not in logs


def _read_tree(root: Path) -> bytes:
    """Every byte Redis wrote to disk (AOF and all)."""
    return b"".join(p.read_bytes() for p in Path(root).rglob("*") if p.is_file())


async def test_unauthenticated_callers_never_name_metric_labels(registry, admin):
    """The registry labels a call by its model only after authenticating it (issue 11.10)."""
    names = [f"probe{secrets.token_hex(6)}" for _ in range(40)]
    async with RegistryClient(registry.address, "shk_0123456789ab_notarealsecretnotarealsecret") as anonymous:
        for name in names:
            with pytest.raises(errors.Unauthenticated):
                await anonymous.get_model(name)
    async with RegistryClient(registry.address, admin.key) as client:
        with pytest.raises(errors.NotFound):
            await client.get_model("labelled-after-auth")
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(registry.metrics_url, timeout=5).read().decode())
    series = [line for line in text.splitlines() if line.startswith("shunter_requests_total{")]
    assert not [line for line in series if any(name in line for name in names)]
    assert any('model="labelled-after-auth"' in line and 'code="NOT_FOUND"' in line for line in series), series
