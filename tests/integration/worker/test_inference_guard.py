"""Workers serve inference only to routers and admins in cluster mode; each service has its own key.

A real registry, a cluster-mode worker holding a worker-role key and a router holding a
router-role key (no service holds the admin key). A client key works through the router
and is refused by the worker itself; open mode is explicit and logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.cli.up_cmd import register_repository, scan
from services.common import api_keys
from services.common.registry_client import RegistryClient
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from tests.integration.router.cluster import wait_for, write_repository
from tests.support.processes import RedisServer, ServiceProcess, start_redis, start_service


@dataclass
class Scoped:
    redis: RedisServer
    registry: ServiceProcess
    worker: ServiceProcess
    router: ServiceProcess
    repository: Path
    keys: dict[str, str]
    key_files: dict[str, Path]


def admin_call(address: str, key: str, fn):
    async def go():
        async with RegistryClient(address, key) as client:
            return await fn(client)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


@pytest.fixture(scope="module")
def scoped(tmp_path_factory) -> Iterator[Scoped]:
    tmp = tmp_path_factory.mktemp("scoped")
    repository = write_repository(tmp / "models")
    redis = start_redis()
    _, admin_key = api_keys.new_key()
    (tmp / "admin.key").write_text(admin_key)
    registry = start_service(["registry", "--redis-url", redis.url, "--admin-key-file", str(tmp / "admin.key"),
                              "--port", "0"])
    started: list[ServiceProcess] = [registry]
    try:
        keys = {"admin": admin_key}
        for role in ("worker", "router", "client"):
            keys[role] = admin_call(registry.address, admin_key,
                                    lambda c, r=role: c.create_api_key(f"svc-{r}", role=r)).secret
        files = {}
        for role, key in keys.items():
            files[role] = tmp / f"{role}.key"
            files[role].write_text(key + "\n")
        admin_call(registry.address, admin_key, lambda c: register_repository(c, repository, scan(repository)))
        worker = start_service(["worker", "--registry", registry.address, "--serve", "calc,echo",
                                "--trusted-repository", str(repository), "--key-file", str(files["worker"]),
                                "--port", "0"], env={"SHUNTER_ADMIN_KEY": ""})
        started.append(worker)
        router = start_service(["router", "--registry", registry.address, "--admin-key-file", str(files["router"]),
                                "--port", "0"], env={"SHUNTER_ADMIN_KEY": ""})
        started.append(router)
        yield Scoped(redis, registry, worker, router, repository, keys, files)
    finally:
        for service in reversed(started):
            service.terminate(timeout=20)
        redis.kill()


def calc_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="calc", model_version="1")
    request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.arange(4, dtype=np.float32).reshape(1, 4).tobytes())
    return request


async def infer(address: str, key: str | None) -> pb.ModelInferResponse:
    metadata = api_keys.auth_metadata(key) if key else None
    async with grpc.aio.insecure_channel(address) as channel:
        return await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(calc_request(), metadata=metadata,
                                                                          timeout=20)


def out(response: pb.ModelInferResponse) -> list[float]:
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).tolist()


async def test_a_client_key_works_through_the_router_with_scoped_service_keys(scoped):
    def served() -> bool:
        try:
            return out(asyncio.run(infer(scoped.router.address, scoped.keys["client"]))) == [0.0, 2.0, 4.0, 6.0]
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc  # only until the router sees the worker
            return False

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        await asyncio.get_running_loop().run_in_executor(pool, lambda: wait_for(served, 30, "served via router"))
    for _ in range(20):  # the stream link and the unary path both carry the router's key
        assert out(await infer(scoped.router.address, scoped.keys["client"])) == [0.0, 2.0, 4.0, 6.0]


async def test_a_client_key_cannot_call_a_worker_directly(scoped):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await infer(scoped.worker.address, scoped.keys["client"])
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "role client" in refused.value.details() and "ModelInfer" in refused.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as worker_key:
        await infer(scoped.worker.address, scoped.keys["worker"])
    assert worker_key.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The worker says so too (rate-limited), so a misconfigured router shows in its log.
    wait_for(lambda: "refused a call to the inference service: PERMISSION_DENIED" in scoped.worker.logs(), 10,
             "the refusal in the worker's log")


@pytest.mark.parametrize("key", [None, "shk_0123456789ab_notarealsecretnotarealsecret"])
async def test_no_key_or_an_unknown_key_is_unauthenticated_on_the_worker(scoped, key):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await infer(scoped.worker.address, key)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_stream_needs_a_key_too(scoped):
    async with grpc.aio.insecure_channel(scoped.worker.address) as channel:
        # Refused when the stream opens, before any message (the client sends none here, so
        # the test does not race its own write against the refusal).
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            metadata=api_keys.auth_metadata(scoped.keys["client"]), timeout=20)
        assert await call.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "role client" in await call.details()


@pytest.mark.parametrize("role", ["router", "admin"])
async def test_router_and_admin_keys_may_call_the_worker(scoped, role):
    assert out(await infer(scoped.worker.address, scoped.keys[role])) == [0.0, 2.0, 4.0, 6.0]


async def test_health_stays_open(scoped):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(scoped.worker.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_service_keys_buy_no_inference_at_the_router(scoped):
    for role in ("worker", "router"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await infer(scoped.router.address, scoped.keys[role])
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, role


async def test_open_mode_is_explicit_and_logged(scoped):
    worker = start_service(["worker", "--registry", scoped.registry.address, "--serve", "calc",
                            "--trusted-repository", str(scoped.repository), "--key-file",
                            str(scoped.key_files["worker"]), "--open-inference", "--port", "0"])
    try:
        assert out(await infer(worker.address, None)) == [0.0, 2.0, 4.0, 6.0]
        assert "WARNING" in worker.logs() and "OPEN MODE" in worker.logs()
    finally:
        worker.terminate(timeout=20)
    assert "OPEN MODE" not in scoped.worker.logs()


def test_a_standalone_worker_is_open_and_says_so(scoped):
    worker = start_service(["worker", "--model-repository", str(scoped.repository), "--models", "calc",
                            "--port", "0"])
    try:
        assert out(asyncio.run(infer(worker.address, None))) == [0.0, 2.0, 4.0, 6.0]
        assert "OPEN MODE" in worker.logs()
    finally:
        worker.terminate(timeout=20)


@pytest.mark.parametrize("link", ["stream", "unary"])
async def test_the_router_transport_presents_its_key_on_both_links(scoped, link):
    import time

    from services.router.worker_client import Forward, UpstreamError, WorkerTransport

    raw = Forward(calc_request().SerializeToString(), deadline=time.monotonic() + 120)
    keyed = WorkerTransport(scoped.worker.address, 1 << 20, link, key=scoped.keys["router"])
    bare = WorkerTransport(scoped.worker.address, 1 << 20, link)
    try:
        assert out(pb.ModelInferResponse.FromString(await keyed.infer(raw, 20.0))) == [0.0, 2.0, 4.0, 6.0]
        with pytest.raises(UpstreamError) as refused:
            await bare.infer(raw, 20.0)
        # The stream link reports any broken stream as UNAVAILABLE (retryable); unary keeps the code.
        assert refused.value.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE)
        if link == "unary":
            assert "authorization" in refused.value.message or "UNAUTHENTICATED" in refused.value.message
        # On the stream link gRPC may report the refused stream as a core error instead (a write
        # racing the worker's abort); the code above is what the router acts on either way.
    finally:
        await keyed.close()
        await bare.close()
