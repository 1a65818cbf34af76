"""A worker in cluster mode refuses hostile artifacts and keeps serving the rest.

One registry and one worker for the module; each test registers its own model versions
from a copy of the example digits model and watches what the worker reports.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.common import artifacts
from services.common.model_config import version_config_text
from services.common.registry_client import RegistryClient
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from tests.integration.registry.conftest import start_registry
from tests.integration.registry.helpers import eventually
from tests.support.crafted_artifacts import add_opaque_object, rewrite_archive
from tests.support.models import build_examples
from tests.support.processes import start_service

#: One model name per test: the worker serves these.
MODELS = ("pickled",)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one directory artifacts may come from in this module."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def cluster(redis_server, admin, root):
    registry = start_registry(redis_server, admin)
    worker = start_service([
        "worker", "--registry", registry.address, "--serve", ",".join(MODELS), "--admin-key", admin.key, "--port", "0",
    ])
    yield registry, worker
    worker.terminate()
    registry.terminate()


def status_of(workers: list[rpb.Worker], model: str, version: str) -> rpb.VersionStatus | None:
    for worker in workers:
        for status in worker.versions:
            if (status.model, status.version) == (model, version):
                return status
    return None


async def infer_digits(address: str, model: str, version: str) -> np.ndarray:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="input__0", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.zeros((1, 64), dtype=np.float32).tobytes())
    async with grpc.aio.insecure_channel(address) as channel:
        response = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32)


async def register_dir(client: RegistryClient, model: str, model_dir: Path, version: str) -> None:
    config, _ = version_config_text(model_dir, version)
    artifact = model_dir / version
    await client.register_model_version(
        model, version, artifacts.uri_for(artifact), artifacts.sha256_of(artifact), config, rpb.PRODUCTION
    )


async def test_torch_export_archive_with_a_pickled_object_never_runs(cluster, admin, root) -> None:
    registry, worker = cluster
    model = "pickled"
    model_dir = root / model
    shutil.copytree(build_examples() / "digits", model_dir)
    marker = root / f"{model}.marker"
    rewrite_archive(model_dir / "3" / "model.pt2", lambda files: add_opaque_object(files, marker))
    async with RegistryClient(registry.address, admin.key) as client:
        await register_dir(client, model, model_dir, "2")
        await register_dir(client, model, model_dir, "3")
        workers = await eventually(
            client.list_workers,
            lambda ws: (s := status_of(ws, model, "3")) is not None and "opaque" in s.error,
            timeout_s=120, what="version 3 refused",
        )
        assert not status_of(workers, model, "3").ready
        await eventually(
            client.list_workers, lambda ws: (s := status_of(ws, model, "2")) is not None and s.ready,
            timeout_s=120, what="version 2 ready",
        )
    assert not marker.exists(), "the archive's pickle ran on the worker"
    assert (await infer_digits(worker.address, model, "2")).shape == (10,)
