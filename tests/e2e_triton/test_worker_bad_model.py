"""A standalone worker with one broken model serves the others; `--strict` keeps all-or-nothing.

The repository is the router tests' calc/echo one with calc version 3 made to fail at load
and a third model whose config has an unknown key; two more copies of echo ask for
``device: cuda`` and ``device: auto``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from tests.integration.router.cluster import write_repository
from tests.support.processes import ROOT, start_service


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = write_repository(tmp_path_factory.mktemp("bad") / "models")
    (root / "calc" / "3" / "model.py").write_text("raise RuntimeError('weights are corrupt')\n")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.py").write_text("")
    (root / "broken" / "config.yaml").write_text("backend: python\nbogus_key: 1\n")
    for name, device in (("on_cuda", "cuda"), ("on_auto", "auto")):
        shutil.copytree(root / "echo", root / name)
        config = root / name / "config.yaml"
        config.write_text(config.read_text() + f"device: {device}\n")
    return root


def test_good_models_served_and_the_bad_one_unavailable_with_its_reason(repository):
    worker = start_service(["worker", "--model-repository", str(repository), "--port", "0"])
    try:
        with grpcclient.InferenceServerClient(worker.address) as client:
            assert client.is_server_live()
            assert client.is_model_ready("calc", "2") and client.is_model_ready("echo", "1")
            assert not client.is_model_ready("calc", "3")
            index = {(m["name"], m["version"]): m for m in client.get_model_repository_index(as_json=True)["models"]}
            assert index[("calc", "3")]["state"] == "UNAVAILABLE"
            assert "weights are corrupt" in index[("calc", "3")]["reason"]
            assert index[("calc", "2")]["state"] == "READY"
            tensor = grpcclient.InferInput("IN", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
            out = client.infer("calc", [tensor]).as_numpy("OUT")  # the highest *ready* version: 2
            np.testing.assert_allclose(out, np.full((1, 4), 2.0000001, dtype=np.float32))
            # device: auto is the GPU when there is one, else the CPU; device: cuda without one is refused.
            has_gpu = torch.cuda.is_available()
            assert client.is_model_ready("on_auto", "1")
            kind = client.get_model_config("on_auto", "1", as_json=True)["config"]["instance_group"][0]["kind"]
            assert kind == ("KIND_GPU" if has_gpu else "KIND_CPU")
            assert client.is_model_ready("on_cuda", "1") == has_gpu
            if not has_gpu:
                assert index[("on_cuda", "1")]["state"] == "UNAVAILABLE"
                assert "device cuda requested but this worker has no CUDA GPU" in index[("on_cuda", "1")]["reason"]
        logs = worker.logs()
        assert "cannot load calc version 3" in logs and "weights are corrupt" in logs
        assert "not serving broken version 1" in logs and "bogus_key" in logs
    finally:
        worker.terminate()


def test_strict_refuses_to_serve_with_the_failing_version_named(repository):
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "worker", "--model-repository", str(repository),
         "--port", "0", "--strict", "--models", "calc,echo"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert "calc version 3: " in done.stderr and "weights are corrupt" in done.stderr
    assert "--strict" in done.stderr
    assert "Traceback" not in done.stderr
