"""Each technique on digits: a loadable artifact whose property changed as claimed, and the
runner's figures checked against an independent computation. Small sets, short timings."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from services.optimize import plan, runner, source
from services.optimize.evalset import load_evalset
from services.optimize.techniques.base import Context
from services.optimize.techniques.tensorrt import profile_shapes
from tests.support import digits_eval
from tests.support.models import build_examples

EVAL_ROWS = 120
TRANSFER_ROWS = 400


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return digits_eval.write(tmp_path_factory.mktemp("digits"), EVAL_ROWS, TRANSFER_ROWS)


@pytest.fixture(scope="module")
def run_v1(sets, tmp_path_factory):
    """One run over digits v1 (TorchScript) with every torch-side technique."""
    repo = build_examples()
    original = source.from_repository(repo, "digits", "1")
    evals = load_evalset(sets[0], original.config, label_column="label")
    transfer = load_evalset(sets[1], original.config, label_column="label")
    techniques = plan.parse_try(
        "quantize-dynamic,quantize-static,prune:0.3,prune-structured:0.3,distill:width=0.25,epochs=3,"
        "compile:onnx,compile:torchscript,compile:torch_export,fp16,compile:tensorrt", "torchscript")
    workdir = tmp_path_factory.mktemp("work")
    outcome = runner.run(original, evals, techniques, workdir, 0.05, transfer=transfer, seconds_per_point=0.01)
    return outcome, evals


def _torch_outputs(path, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return module(torch.from_numpy(inputs)).numpy()


def _linear_weights(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path))
    return [p for name, p in module.named_parameters() if name.endswith("weight") and p.dim() == 2]


def test_every_candidate_loads_and_is_judged(run_v1):
    outcome, _ = run_v1
    status = {r.name: r.status for r in outcome.results}
    assert status.pop("fp16") == "skipped" if not torch.cuda.is_available() else True
    assert status.pop("compile:tensorrt") == "skipped"
    assert "TensorRT does not import here" in outcome.result("compile:tensorrt").reason
    assert status.pop("original v1") == "original"
    assert set(status.values()) <= {"accepted", "rejected"}, status  # built, loaded by the engine, measured
    for r in outcome.results[1:]:
        if r.status in ("accepted", "rejected"):
            assert r.measurement.size_bytes > 0 and r.measurement.best_rows_per_s > 0


def test_quantize_dynamic_has_int8_linear_layers(run_v1):
    r = run_v1[0].result("quantize-dynamic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = torch.jit.load(str(r.directory / "model.pt")).inlined_graph
    assert str(code).count("quantized::linear_dynamic") == 2
    assert r.backend == "torchscript" and r.properties["int8_layers"] == 2


def test_quantize_static_has_qdq_nodes(run_v1):
    r = run_v1[0].result("quantize-static")
    model = onnx.load(str(r.directory / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 2
    assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)


def test_prune_sparsity_is_the_amount(run_v1):
    r = run_v1[0].result("prune:0.3")
    weights = _linear_weights(r.directory / "model.pt")
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros / total == pytest.approx(0.3, abs=0.01)
    assert "run no faster" in " ".join(r.notes)


def test_structured_prune_and_student_have_fewer_parameters(run_v1, sets):
    outcome, evals = run_v1
    original_params = sum(p.numel() for p in _linear_weights(outcome.original.artifact_path))
    pruned = outcome.result("prune-structured:0.3")
    pruned_weights = _linear_weights(pruned.directory / "model.pt")
    assert [tuple(w.shape) for w in pruned_weights] == [(128 - round(0.3 * 128), 64), (10, 128 - round(0.3 * 128))]
    student = outcome.result("distill:width=0.25,epochs=3")
    student_weights = _linear_weights(student.directory / "model.pt")
    assert [tuple(w.shape) for w in student_weights] == [(32, 64), (10, 32)]
    assert sum(w.numel() for w in student_weights) < sum(w.numel() for w in pruned_weights) < original_params
    # The student still classifies (three epochs on 400 rows): well above chance.
    outputs = _torch_outputs(student.directory / "model.pt", evals.inputs["input__0"])
    assert np.mean(outputs.argmax(1) == evals.labels) > 0.5


def test_compiled_candidates_match_the_original(run_v1):
    outcome, _ = run_v1
    for name in ("compile:onnx", "compile:torchscript", "compile:torch_export"):
        r = outcome.result(name)
        assert r.quality.agreement == 1.0 and r.quality.max_abs_diff < 1e-5, name
    assert outcome.result("compile:torch_export").backend == "torch_export"


def test_figures_match_an_independent_computation(run_v1):
    outcome, evals = run_v1
    x, labels = evals.inputs["input__0"], evals.labels
    original = _torch_outputs(outcome.original.artifact_path, x)
    r = outcome.result("prune:0.3")
    pruned = _torch_outputs(r.directory / "model.pt", x)
    assert r.quality.accuracy == pytest.approx(np.mean(pruned.argmax(1) == labels))
    assert r.quality.agreement == pytest.approx(np.mean(pruned.argmax(1) == original.argmax(1)))
    assert r.drop == pytest.approx(np.mean(original.argmax(1) == labels) - np.mean(pruned.argmax(1) == labels))
    assert r.quality.max_abs_diff == pytest.approx(float(np.abs(pruned - original).max()), rel=1e-4, abs=1e-6)
    assert r.status == ("accepted" if r.drop <= 0.05 else "rejected")


def test_winner_follows_the_rule(run_v1):
    outcome, _ = run_v1
    base = outcome.results[0].measurement
    worth = [r for r in outcome.results[1:] if r.status == "accepted"
             and (r.measurement.best_rows_per_s >= 1.05 * base.best_rows_per_s
                  or r.measurement.size_bytes * 1.05 <= base.size_bytes)]
    expected = max(worth, key=lambda r: (r.measurement.best_rows_per_s, -r.measurement.size_bytes)).name
    assert outcome.winner == expected
    # quantize-dynamic halves the file, so some candidate is always worth registering here.
    assert outcome.result("quantize-dynamic").measurement.size_bytes * 1.05 <= base.size_bytes


def test_onnx_original_gets_ort_dynamic_int8(sets, tmp_path):
    original = source.from_repository(build_examples(), "digits", "2")
    evals = load_evalset(sets[0], original.config, label_column="label")
    techniques = plan.parse_try("quantize-dynamic", "onnx")
    outcome = runner.run(original, evals, techniques, tmp_path, 0.05, seconds_per_point=0.01)
    r = outcome.result("quantize-dynamic")
    ops = [n.op_type for n in onnx.load(str(r.directory / "model.onnx")).graph.node]
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert r.status in ("accepted", "rejected") and r.quality.agreement > 0.9


def test_tensorrt_profiles_follow_the_batching_config(sets):
    original = source.from_repository(build_examples(), "digits", "1")
    evals = load_evalset(sets[0], original.config, label_column="label")
    ctx = Context(original, evals, evals, True)
    assert profile_shapes(ctx) == {"input__0": ((1, 64), (64, 64), (64, 64))}


STUDENT = """
from torch import nn


def student(config):
    # Logits out: the tool adds the softmax so the student answers like digits (probabilities).
    return nn.Sequential(nn.Linear(config.inputs[0].shape[0], 16), nn.ReLU(), nn.Linear(16, 10))
"""


def test_student_architecture_from_a_trusted_directory(sets, tmp_path):
    original = source.from_repository(build_examples(), "digits", "1")
    evals = load_evalset(sets[0], original.config, label_column="label")
    transfer = load_evalset(sets[1], original.config, label_column="label")
    trusted = tmp_path / "students"
    trusted.mkdir()
    (trusted / "small.py").write_text(STUDENT)
    (tmp_path / "outside.py").write_text(STUDENT)
    (trusted / "escape.py").symlink_to(tmp_path / "outside.py")
    techniques = plan.parse_try("distill:arch=small,epochs=5,distill:arch=escape,epochs=1", "torchscript")
    outcome = runner.run(original, evals, techniques, tmp_path / "work", 0.5, transfer=transfer,
                         seconds_per_point=0.01, rounds=1, trusted_dir=trusted)
    small = outcome.result("distill:arch=small,epochs=5")
    assert small.status in ("accepted", "rejected") and small.properties["parameters"] == 64 * 16 + 16 + 16 * 10 + 10
    outputs = _torch_outputs(small.directory / "model.pt", evals.inputs["input__0"])
    assert np.allclose(outputs.sum(axis=1), 1.0, atol=1e-5)  # probabilities, like the original
    escaped = outcome.result("distill:arch=escape,epochs=1")
    assert escaped.status == "rejected" and "outside the model directory" in escaped.reason
    with pytest.raises(plan.OptimizeError, match="arch must name a module"):
        plan.parse_try("distill:arch=../x", "torchscript")


DEEP_CONFIG = """\
backend: torchscript
max_batch_size: 64
inputs: [{name: input__0, datatype: FP32, shape: [64]}]
outputs: [{name: output__0, datatype: FP32, shape: [10]}]
dynamic_batching: {max_queue_delay_us: 100, preferred_batch_sizes: [16]}
"""


def test_depth_shrink_drops_a_square_hidden_layer(sets, tmp_path):
    class Deep(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = torch.nn.Linear(64, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 10)

        def forward(self, input__0: torch.Tensor) -> torch.Tensor:
            hidden = torch.relu(self.b(torch.relu(self.a(input__0 / 16.0))))
            return torch.softmax(self.c(hidden), dim=1)

    repo = tmp_path / "repo"
    (repo / "deep" / "1").mkdir(parents=True)
    (repo / "deep" / "config.yaml").write_text(DEEP_CONFIG)
    torch.manual_seed(0)
    torch.jit.script(Deep()).save(str(repo / "deep" / "1" / "model.pt"))
    original = source.from_repository(repo, "deep", "1")
    evals = load_evalset(sets[0], original.config, label_column="label")
    transfer = load_evalset(sets[1], original.config, label_column="label")
    techniques = plan.parse_try("distill:width=1,depth=1,epochs=2,distill:width=0.5,depth=1,epochs=2", "torchscript")
    outcome = runner.run(original, evals, techniques, tmp_path / "work", 1.0, transfer=transfer,
                         seconds_per_point=0.01, rounds=1)
    shallow = outcome.result("distill:width=1,depth=1,epochs=2")
    assert [tuple(w.shape) for w in _linear_weights(shallow.directory / "model.pt")] == [(32, 64), (10, 32)]
    assert "1 hidden layer(s) fewer" in shallow.notes[0]
    both = outcome.result("distill:width=0.5,depth=1,epochs=2")
    assert [tuple(w.shape) for w in _linear_weights(both.directory / "model.pt")] == [(16, 64), (10, 16)]
    # digits has no square hidden layer: refused with the reason.
    digits = source.from_repository(build_examples(), "digits", "1")
    refused = runner.run(digits, evals, plan.parse_try("distill:depth=1,epochs=1", "torchscript"), tmp_path / "w2",
                         1.0, seconds_per_point=0.01, rounds=1).result("distill:depth=1,epochs=1")
    assert refused.status == "rejected" and "depth needs a hidden layer as wide in as out" in refused.reason


def test_an_original_that_does_not_load_is_named(sets, tmp_path):
    repo = tmp_path / "repo"
    (repo / "deep" / "1").mkdir(parents=True)
    (repo / "deep" / "config.yaml").write_text(DEEP_CONFIG)
    (repo / "deep" / "1" / "model.pt").write_bytes(b"not a TorchScript archive")
    original = source.from_repository(repo, "deep", "1")
    evals = load_evalset(sets[0], original.config, label_column="label")
    with pytest.raises(plan.OptimizeError, match="deep version 1 does not load or run as a worker would"):
        runner.run(original, evals, plan.parse_try("compile:onnx", "torchscript"), tmp_path / "w", 0.01,
                   seconds_per_point=0.01, rounds=1)


def test_half_precision_build_on_the_cpu(sets, tmp_path):
    """fp16 runs on CUDA only; the same build on the CPU checks all of it but the device."""
    from services.optimize.measure import Loaded
    from services.optimize.source import write_config
    from services.optimize.techniques.compile import build_half

    original = source.from_repository(build_examples(), "digits", "1")
    evals = load_evalset(sets[0], original.config, label_column="label")
    built = build_half(Context(original, evals, evals, True), tmp_path, "cpu")
    loaded = Loaded("digits", "fp16", tmp_path, write_config(tmp_path, built.config), evals)
    try:
        reference = _torch_outputs(original.artifact_path, evals.inputs["input__0"])
        assert loaded.outputs.dtype == np.float32
        assert np.abs(loaded.outputs - reference).max() < 1e-2  # half precision, float32 at the edges
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            halves = [p for p in torch.jit.load(str(tmp_path / "model.pt")).parameters() if p.dtype == torch.float16]
        assert len(halves) == 4
    finally:
        loaded.close()
