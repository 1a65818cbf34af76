"""A worker in cluster mode refuses hostile artifacts and keeps serving the rest.

One registry and one worker for the module; each test registers its own model versions
from a copy of the example digits model and watches what the worker reports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.common import artifacts
from services.common.errors import InvalidArgument
from services.common.model_config import version_config_text
from services.common.registry_client import RegistryClient
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from tests.integration.registry.conftest import start_registry
from tests.integration.registry.helpers import eventually
from tests.support.crafted_artifacts import add_opaque_object, rewrite_archive
from tests.support.models import build_examples
from tests.support.processes import ROOT, start_service

#: One model name per test: the worker serves these.
MODELS = ("pickled", "rootdir", "rootfile", "inside", "leaky", "ahang", "bafter")
#: Short enough for a test, long enough for the example models on a busy machine.
LOAD_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one directory artifacts may come from in this module."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def cluster(redis_server, admin, root):
    registry = start_registry(redis_server, admin, "--artifact-root", str(root))
    trusted = root / "trusted"
    trusted.mkdir()
    worker = start_service([
        "worker", "--registry", registry.address, "--serve", ",".join(MODELS), "--admin-key", admin.key,
        "--port", "0", "--trusted-repository", str(trusted), "--artifact-root", str(root),
        "--load-timeout-s", str(LOAD_TIMEOUT_S),
    ])
    yield registry, worker
    # Exits cleanly even with an engine thread still stuck in a load (test_a_load_that_hangs...).
    code = worker.terminate(timeout=30)
    registry.terminate()
    assert code == 0, worker.logs()


def status_of(workers: list[rpb.Worker], model: str, version: str) -> rpb.VersionStatus | None:
    for worker in workers:
        for status in worker.versions:
            if (status.model, status.version) == (model, version):
                return status
    return None


async def infer_digits(address: str, model: str, version: str, key: str) -> np.ndarray:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="input__0", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.zeros((1, 64), dtype=np.float32).tobytes())
    async with grpc.aio.insecure_channel(address) as channel:
        # A cluster worker serves routers and admins only.
        response = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, metadata=(("authorization", f"Bearer {key}"),), timeout=30)
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
    assert "refusing pickled version 3" in worker.logs()  # for good: not retried every 30 s
    assert (await infer_digits(worker.address, model, "2", admin.key)).shape == (10,)


PYTHON_CONFIG = """\
backend: python
max_batch_size: 4
inputs: [{name: IN, datatype: FP32, shape: [4]}]
outputs: [{name: OUT, datatype: FP32, shape: [4]}]
handler: handler.py
"""

HANDLER = """
from pathlib import Path

import numpy as np

Path({marker!r}).write_text("code ran")


def infer(inputs):
    return {{"OUT": inputs["IN"] * 2}}
"""


async def wait_refused(client: RegistryClient, model: str, version: str, text: str) -> None:
    await eventually(
        client.list_workers,
        lambda ws: (s := status_of(ws, model, version)) is not None and text in s.error,
        timeout_s=120, what=f"{model} version {version} refused",
    )


async def test_trusted_repository_cannot_be_escaped_through_its_parent(cluster, admin, root) -> None:
    registry, _ = cluster
    trusted = root / "trusted"
    marker = root / "escape.marker"
    # The handler lies in the trusted root's parent: not trusted.
    (root / "handler.py").write_text(HANDLER.format(marker=str(marker)))
    (trusted / "model.py").write_text(HANDLER.format(marker=str(marker)))
    # A model inside the root, for contrast: its handler is trusted and runs.
    inside = trusted / "inside"
    (inside / "1").mkdir(parents=True)
    (inside / "config.yaml").write_text(PYTHON_CONFIG)
    inside_marker = root / "inside.marker"
    (inside / "handler.py").write_text(HANDLER.format(marker=str(inside_marker)))
    async with RegistryClient(registry.address, admin.key) as client:
        # The trusted root itself as the version directory: its model directory is root/.
        await client.register_model_version(
            "rootdir", 1, artifacts.uri_for(trusted), artifacts.sha256_of(trusted), PYTHON_CONFIG, rpb.PRODUCTION
        )
        # A file directly in the root: its version directory is the root, its model directory root/.
        file_config = "backend: python\nmax_batch_size: 4\ninputs: [{name: IN, datatype: FP32, shape: [4]}]\n" \
            "outputs: [{name: OUT, datatype: FP32, shape: [4]}]\n"
        await client.register_model_version(
            "rootfile", 1, artifacts.uri_for(trusted / "model.py"), artifacts.sha256_of(trusted / "model.py"),
            file_config, rpb.PRODUCTION,
        )
        await client.register_model_version(
            "inside", 1, artifacts.uri_for(inside / "1"), artifacts.sha256_of(inside / "1"), PYTHON_CONFIG,
            rpb.PRODUCTION,
        )
        for model in ("rootdir", "rootfile"):
            await wait_refused(client, model, "1", "is not inside a trusted repository")
        await eventually(
            client.list_workers, lambda ws: (s := status_of(ws, "inside", "1")) is not None and s.ready,
            timeout_s=120, what="inside version 1 ready",
        )
    assert not marker.exists(), "a handler outside the trusted repository ran"
    assert inside_marker.exists()


ONNX_CONFIG = """\
backend: onnx
max_batch_size: 4
inputs: [{name: x, datatype: FP32, shape: [4]}]
outputs: [{name: y, datatype: FP32, shape: [2]}]
"""


async def test_registry_refuses_artifacts_outside_its_roots(cluster, admin, root) -> None:
    registry, _ = cluster
    (root / "zero").symlink_to("/dev/zero")
    os.mkfifo(root / "fifo")
    refused = {
        "file:///etc/passwd": "outside the artifact roots",
        f"file://otherhost{root}/m/1": "names host 'otherhost'",
        f"file://{root}/%2e%2e/etc/passwd": "'..' segments",
        f"file://{root}/../etc/passwd": "'..' segments",
        (root / "zero").as_uri(): "outside the artifact roots",  # resolves to /dev/zero
        (root / "fifo").as_uri(): "not a regular file or directory (a FIFO)",
    }
    async with RegistryClient(registry.address, admin.key) as client:
        for uri, why in refused.items():
            with pytest.raises(InvalidArgument, match=why.replace("(", "\\(").replace(")", "\\)")):
                await client.register_model_version("refused", 1, uri, "0" * 64, ONNX_CONFIG)
        assert "refused" not in {m.name for m in await client.list_models()}


def test_cli_refuses_a_device_or_an_artifact_outside_its_roots_without_hashing(cluster, admin, root) -> None:
    registry, _ = cluster
    config = root / "onnx.yaml"
    config.write_text(ONNX_CONFIG)
    env = {**os.environ, "SHUNTER_REGISTRY": registry.address, "SHUNTER_ADMIN_KEY": admin.key}

    def register(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "services.cli.main", "models", "register", "cli", "--version", "1",
             "--config", str(config), *extra],
            cwd=ROOT, capture_output=True, text=True, env=env, timeout=60,  # /dev/zero used to hash forever
        )

    device = register("--artifact", "/dev/zero")
    assert device.returncode == 1 and "not a regular file or directory (a character device)" in device.stderr
    outside = register("--artifact", "/etc/hostname", "--artifact-root", str(root))
    assert outside.returncode == 1 and "outside the artifact roots" in outside.stderr, outside.stderr


async def test_worker_refuses_an_artifact_swapped_for_a_device_and_still_stops(cluster, admin, root) -> None:
    registry, _ = cluster
    artifact = root / "swapped" / "1" / "model.onnx"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"registered bytes")
    async with RegistryClient(registry.address, admin.key) as client:
        await client.register_model_version(
            "swapped", 1, artifacts.uri_for(artifact), artifacts.sha256_of(artifact), ONNX_CONFIG, rpb.PRODUCTION
        )
        artifact.unlink()
        artifact.symlink_to("/dev/zero")  # after registration: only the worker can catch it
        worker = start_service([
            "worker", "--registry", registry.address, "--serve", "swapped", "--admin-key", admin.key, "--port", "0",
        ])
        try:
            await wait_refused(client, "swapped", "1", "not a regular file")
        finally:
            code = worker.terminate(timeout=30)
    assert code == 0, worker.logs()


async def test_worker_refuses_a_directory_artifact_that_links_outside_its_roots(cluster, admin, root, tmp_path) -> None:
    registry, _ = cluster
    version_dir = root / "leaky" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(b"weights")
    secret = tmp_path / "secret.bin"  # outside the root
    secret.write_bytes(b"not the worker's to read")
    (version_dir / "extra.bin").symlink_to(secret)
    async with RegistryClient(registry.address, admin.key) as client:
        # The registry does not walk directories; the worker does, before it reads a byte.
        await client.register_model_version(
            "leaky", 1, artifacts.uri_for(version_dir), artifacts.sha256_of(version_dir), ONNX_CONFIG, rpb.PRODUCTION
        )
        await wait_refused(client, "leaky", "1", "outside the artifact roots")


async def test_a_load_that_hangs_is_given_up_and_the_next_versions_load(cluster, admin, root) -> None:
    registry, _ = cluster
    trusted = root / "trusted"
    for name, load_hook in (("ahang", "time.sleep(3600)"), ("bafter", "pass")):
        model_dir = trusted / name
        (model_dir / "1").mkdir(parents=True)
        (model_dir / "config.yaml").write_text(PYTHON_CONFIG)
        (model_dir / "handler.py").write_text(
            f"import time\n\n\ndef load(model_dir):\n    {load_hook}\n\n\ndef infer(inputs):\n"
            "    return {'OUT': inputs['IN'] * 2}\n"
        )
    async with RegistryClient(registry.address, admin.key) as client:
        for name in ("ahang", "bafter"):  # the reconciler loads in this (sorted) order
            version_dir = trusted / name / "1"
            await client.register_model_version(
                name, 1, artifacts.uri_for(version_dir), artifacts.sha256_of(version_dir), PYTHON_CONFIG,
                rpb.PRODUCTION,
            )
        await wait_refused(client, "ahang", "1", f"did not load and warm up within {LOAD_TIMEOUT_S} s")
        await eventually(
            client.list_workers, lambda ws: (s := status_of(ws, "bafter", "1")) is not None and s.ready,
            timeout_s=120, what="bafter ready after the hung load was given up",
        )
