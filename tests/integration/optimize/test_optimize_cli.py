"""`shunter optimize` end to end: bad input refused with the problem named and nothing
registered; a registry version whose artifact fails its sha256 refused; the winner
registered as a staged version with its report, served by a real worker and reached
through a real router.

The command runs in-process through the CLI's own ``main`` (torch is imported once); the
registry, Redis, worker and router are real processes.
"""

from __future__ import annotations

import asyncio
import json
import secrets

import grpc
import numpy as np
import pytest

from services.cli.main import main
from services.common import artifacts
from services.common.model_config import version_config_text
from services.common.registry_client import RegistryClient
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from tests.integration.registry.conftest import AdminKey, start_registry
from tests.support import digits_eval
from tests.support.models import build_examples
from tests.support.processes import start_redis, start_service

EVAL_ROWS = 90
FAST = ["--seconds-per-point", "0.01"]


@pytest.fixture(scope="module")
def examples():
    return build_examples()


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return digits_eval.write(tmp_path_factory.mktemp("digits"), EVAL_ROWS, 300)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    redis = start_redis()
    key = f"adm-{secrets.token_urlsafe(24)}"
    path = tmp_path_factory.mktemp("admin") / "admin.key"
    path.write_text(key + "\n")
    admin = AdminKey(key, path)
    registry = start_registry(redis, admin)
    registry.redis = redis  # tests start a second registry on the same Redis
    yield registry, admin
    registry.terminate()
    redis.kill()


def admin_call(registry, admin, fn):
    async def go():
        async with RegistryClient(registry.address, admin.key) as client:
            return await fn(client)

    return asyncio.run(go())


def register_v1(registry, admin, examples, model, sha256=None):
    digits = examples / "digits"
    config, _ = version_config_text(digits, "1")
    artifact = digits / "1" / "model.pt"
    digest = sha256 or artifacts.sha256_of(artifact)
    return admin_call(registry, admin, lambda c: c.register_model_version(
        model, 1, artifacts.uri_for(artifact), digest, config, rpb.PRODUCTION))


def versions(registry, admin, model):
    return [v.version for v in admin_call(registry, admin, lambda c: c.get_model(model)).versions]


def optimize(*argv):
    return main(["optimize", *argv, *FAST])


def test_bad_input_is_named_and_nothing_is_built(examples, sets, tmp_path, capsys):
    repo = ["--repository", str(examples)]
    eval_path, _ = sets
    wrong_shape = tmp_path / "wrong.npz"
    np.savez(wrong_shape, input__0=np.zeros((4, 8), np.float32))
    short_labels = tmp_path / "labels.npy"
    np.save(short_labels, np.arange(3))
    inputs_only = tmp_path / "inputs.npz"
    np.savez(inputs_only, input__0=np.zeros((4, 64), np.float32))
    cases = [
        (["digits", "--version", "1", "--eval", str(wrong_shape), "--try", "prune:0.3", *repo],
         "input input__0 has rows of shape [8], the model takes [64]"),
        (["digits", "--version", "1", "--eval", str(inputs_only), "--labels", str(short_labels), "--try",
          "prune:0.3", *repo], "3 labels for 4 eval rows"),
        (["digits", "--version", "1", "--eval", str(eval_path), "--label-column", "label", "--try", "sharpen", *repo],
         "unknown technique 'sharpen'"),
        (["digits", "--version", "2", "--eval", str(eval_path), "--label-column", "label", "--try", "prune:0.3",
          *repo], "prune edits a torch module, and this version is an onnx artifact"),
        (["digits", "--version", "9", "--eval", str(eval_path), "--try", "prune:0.3", *repo], "no version directory"),
    ]
    for argv, message in cases:
        assert optimize(*argv, "--report", str(tmp_path / "r")) == 2, message
        err = capsys.readouterr().err
        assert message in err and "nothing registered" in err, err
    assert not (tmp_path / "r").exists()  # refused before anything was built


def test_sha256_mismatch_is_refused(cluster, examples, sets, tmp_path, capsys):
    registry, admin = cluster
    register_v1(registry, admin, examples, "digits-tampered", sha256="0" * 64)
    code = optimize("digits-tampered", "--version", "1", "--eval", str(sets[0]), "--label-column", "label",
                    "--try", "compile:onnx", "--registry", registry.address, "--admin-key", admin.key,
                    "--register", "--report", str(tmp_path))
    assert code == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    assert versions(registry, admin, "digits-tampered") == ["1"]


def test_no_candidate_within_budget_registers_nothing(cluster, examples, sets, tmp_path, capsys):
    registry, admin = cluster
    register_v1(registry, admin, examples, "digits-strict")
    code = optimize("digits-strict", "--version", "1", "--eval", str(sets[0]), "--label-column", "label",
                    "--try", "prune:0.9", "--max-accuracy-drop", "0", "--registry", registry.address,
                    "--admin-key", admin.key, "--register", "--report", str(tmp_path))
    captured = capsys.readouterr()
    assert code == 3
    assert "nothing registered" in captured.err
    assert "exceeds 0.0" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.png").stat().st_size > 0
    assert versions(registry, admin, "digits-strict") == ["1"]


def test_winner_registered_served_and_routed(cluster, examples, sets, tmp_path, capsys):
    registry, admin = cluster
    register_v1(registry, admin, examples, "digits")
    code = optimize("digits", "--version", "1", "--eval", str(sets[0]), "--label-column", "label",
                    "--try", "compile:onnx,prune:0.3", "--registry", registry.address, "--admin-key", admin.key,
                    "--register", "--report", str(tmp_path / "report"), "--json")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "registered digits version 2" in captured.err
    result = json.loads(captured.out)
    assert result["registered_version"] == "2" and result["winner"] in ("compile:onnx", "prune:0.3")

    model = admin_call(registry, admin, lambda c: c.get_model("digits"))
    staged = next(v for v in model.versions if v.version == "2")
    assert staged.state == rpb.STAGED and "shunter optimize: digits version 1" in staged.optimize_report
    assert main(["models", "show", "digits", "--registry", registry.address, "--admin-key", admin.key]) == 0
    shown = capsys.readouterr().out
    assert "optimisation report of version 2" in shown and f"winner: {result['winner']}" in shown

    # What the worker will verify before loading it.
    assert artifacts.sha256_of(artifacts.fetch(staged.artifact_uri)) == staged.sha256
    key = admin_call(registry, admin, lambda c: c.create_api_key("optimize-test")).secret
    worker = start_service(["worker", "--registry", registry.address, "--serve", "digits", "--port", "0"],
                           env={"SHUNTER_ADMIN_KEY": admin.key})
    router = None
    try:
        _wait_ready(registry, admin, "digits", "2")
        router = start_service(["router", "--registry", registry.address, "--redis-url", registry.redis.url,
                                "--port", "0"], env={"SHUNTER_ADMIN_KEY": admin.key})
        x = np.load(sets[0])["input__0"][:5]
        request = pb.ModelInferRequest(model_name="digits", model_version="2")
        request.inputs.add(name="input__0", datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(np.ascontiguousarray(x, "<f4").tobytes())
        headers = (("authorization", f"Bearer {key}"),)
        with grpc.insecure_channel(router.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            answer = _retry(lambda: stub.ModelInfer(request, metadata=headers, timeout=30))
        got = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(tuple(answer.outputs[0].shape))
        expected = np.load(sets[0])
        assert got.shape == (5, 10)
        assert np.mean(got.argmax(1) == expected["label"][:5]) >= 0.8
    finally:
        if router is not None:
            router.terminate()
        worker.terminate()


def _wait_ready(registry, admin, model, version, timeout_s=120.0):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workers = admin_call(registry, admin, lambda c: c.list_workers())
        if any(s.model == model and s.version == version and s.ready for w in workers for s in w.versions):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{model} v{version} not ready on a worker")


def _retry(call, attempts=50):
    import time

    for _ in range(attempts - 1):
        try:
            return call()
        except grpc.RpcError:
            time.sleep(0.2)  # the router's routing table catches up with the new key and worker
    return call()


def test_registry_refusal_still_writes_the_report(cluster, examples, sets, tmp_path, capsys):
    """A registry confined to another artifact root refuses the candidate: exit 1, the
    refusal named, the report written without a registered version, nothing registered."""
    registry, admin = cluster
    root = tmp_path / "artifact-root"
    root.mkdir()
    confined = start_registry(registry.redis, admin, "--artifact-root", str(root))
    try:
        # The original lives outside the root too, so register it on the open registry's Redis
        # first (both registries share one Redis), then optimise through the confined one.
        register_v1(registry, admin, examples, "digits-confined")
        code = optimize("digits-confined", "--version", "1", "--eval", str(sets[0]), "--label-column", "label",
                        "--try", "compile:onnx", "--registry", confined.address, "--admin-key", admin.key,
                        "--register", "--report", str(tmp_path / "report"))
        err = capsys.readouterr().err
        assert code == 1, err
        assert "nothing registered" in err and "artifact" in err
        text = (tmp_path / "report" / "report.md").read_text()
        assert "winner: compile:onnx" in text and "registered as version" not in text
        assert versions(registry, admin, "digits-confined") == ["1"]
    finally:
        confined.terminate()
