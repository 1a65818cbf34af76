"""`shunter worker --registry`: serves what the registry assigns, holds a lease, refuses bad artifacts."""

from __future__ import annotations

import time

import grpc
import pytest

from services.common import artifacts
from services.common.model_config import version_config_text
from services.common.registry_client import RegistryClient
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from tests.integration.registry.conftest import start_registry
from tests.integration.registry.helpers import eventually
from tests.support.models import build_examples
from tests.support.processes import start_service

LEASE_TTL_S = 3


@pytest.fixture(scope="module")
def examples():
    return build_examples()


@pytest.fixture(scope="module")
def short_lease_registry(redis_server, admin):
    proc = start_registry(redis_server, admin, "--lease-ttl-s", str(LEASE_TTL_S))
    yield proc
    proc.terminate()


def worker_status(workers: list[rpb.Worker], version: str) -> rpb.VersionStatus | None:
    for worker in workers:
        for status in worker.versions:
            if (status.model, status.version) == ("digits", version):
                return status
    return None


async def test_worker_in_cluster_mode(short_lease_registry, admin, examples):
    registry = short_lease_registry
    digits = examples / "digits"
    async with RegistryClient(registry.address, admin.key) as client:
        # Version 2 (ONNX, a directory artifact) is good; version 1's recorded sha256 is wrong.
        config2, _ = version_config_text(digits, "2")
        await client.register_model_version(
            "digits", 2, artifacts.uri_for(digits / "2"), artifacts.sha256_of(digits / "2"), config2, rpb.PRODUCTION
        )
        config1, _ = version_config_text(digits, "1")
        await client.register_model_version(
            "digits", 1, artifacts.uri_for(digits / "1" / "model.pt"), "0" * 64, config1
        )

        worker = start_service([
            "worker", "--registry", registry.address, "--serve", "digits", "--admin-key", admin.key, "--port", "0",
        ])
        try:
            workers = await eventually(
                client.list_workers, lambda ws: (s := worker_status(ws, "2")) is not None and s.ready,
                timeout_s=180, what="digits v2 ready in ListWorkers",
            )
            assert workers[0].address == worker.address
            workers = await eventually(
                client.list_workers,
                lambda ws: "sha256 mismatch" in (worker_status(ws, "1") or rpb.VersionStatus()).error,
                what="digits v1 refused",
            )
            assert not worker_status(workers, "1").ready
            assert "refusing digits version 1" in worker.logs() or "sha256 mismatch" in worker.logs()

            key = (("authorization", f"Bearer {admin.key}"),)  # cluster workers serve routers and admins
            async with grpc.aio.insecure_channel(worker.address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                assert (await stub.ModelReady(pb.ModelReadyRequest(name="digits", version="2"), metadata=key)).ready
                try:
                    refused = (await stub.ModelReady(pb.ModelReadyRequest(name="digits", version="1"),
                                                     metadata=key)).ready
                except grpc.aio.AioRpcError:
                    refused = False
                assert not refused  # never loaded

            (lease,) = await client.list_workers()
            worker.kill()  # SIGKILL: no deregistration, only the lease's expiry removes it
            killed_ms = time.time() * 1000
            # The last renewal before the kill bounds how long it can stay: within its TTL.
            assert lease.expires_at_ms <= killed_ms + LEASE_TTL_S * 1000 + 1000
            await eventually(client.list_workers, lambda ws: ws == [], timeout_s=60, what="the killed worker leaves")
            table = await anext(aiter(client.watch()))
            assert list(table.workers) == []
        finally:
            worker.kill()
