"""--try parsing, eval-set checks, figures and the winner rule: no model runs here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.common.model_config import parse_model_config
from services.optimize.errors import OptimizeError, TechniqueNotApplicable
from services.optimize.evalset import load_evalset
from services.optimize.plan import parse_try
from services.optimize.verdict import Scored, assess, infer_task, judge, pick_winner

DIGITS = parse_model_config(
    "backend: torchscript\nmax_batch_size: 64\ninputs: [{name: input__0, datatype: FP32, shape: [64]}]\n"
    "outputs: [{name: output__0, datatype: FP32, shape: [10]}]\n", "test",
)
TEXT = parse_model_config(
    "backend: onnx\nmax_batch_size: 8\ninputs: [{name: TEXT, datatype: BYTES, shape: [1]}]\n"
    "outputs: [{name: EMBEDDING, datatype: FP32, shape: [4]}]\n", "test",
)


def test_try_list_keeps_technique_options_together():
    techniques = parse_try("quantize-dynamic,distill:width=0.25,epochs=3,prune:0.3,compile:onnx", "torchscript")
    assert [t.label for t in techniques] == ["quantize-dynamic", "distill:width=0.25,epochs=3", "prune:0.3",
                                             "compile:onnx"]
    assert techniques[1].params["width"] == 0.25 and techniques[1].params["epochs"] == 3
    assert techniques[1].params["T"] == 4.0  # a default kept
    assert parse_try("prune-structured:0.5,finetune=2", "torch_export")[0].params == {"amount": 0.5, "finetune": 2}


@pytest.mark.parametrize(("text", "message"), [
    ("quantise-dynamic", "unknown technique 'quantise-dynamic'"),
    ("prune", "prune needs an amount"),
    ("prune:1.5", "between 0 and 1"),
    ("compile:tflite", "compile needs one target"),
    ("distill:layers=2", "unknown option 'layers=2'"),
    ("prune:0.3,prune:0.3", "more than once"),
    ("", "names no technique"),
])
def test_bad_try_items_are_named(text, message):
    with pytest.raises(OptimizeError, match=message):
        parse_try(text, "torchscript")


def test_torch_techniques_refused_on_onnx_with_the_reason():
    with pytest.raises(TechniqueNotApplicable, match="prune edits a torch module, and this version is an onnx"):
        parse_try("quantize-static,prune:0.3", "onnx")
    with pytest.raises(TechniqueNotApplicable, match="cannot turn an onnx artifact back"):
        parse_try("compile:torchscript", "onnx")
    assert [t.label for t in parse_try("quantize-dynamic,quantize-static,compile:onnx", "onnx")] == [
        "quantize-dynamic", "quantize-static", "compile:onnx"]


def test_evalset_shape_dtype_and_label_checks(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, input__0=np.zeros((5, 64), np.float32), label=np.arange(5))
    loaded = load_evalset(good, DIGITS, label_column="label")
    assert loaded.rows == 5 and list(loaded.labels) == [0, 1, 2, 3, 4]

    shape = tmp_path / "shape.npz"
    np.savez(shape, input__0=np.zeros((5, 63), np.float32))
    with pytest.raises(OptimizeError, match=r"input input__0 has rows of shape \[63\], the model takes \[64\]"):
        load_evalset(shape, DIGITS)
    dtype = tmp_path / "dtype.npz"
    np.savez(dtype, input__0=np.zeros((5, 64), np.int32))
    with pytest.raises(OptimizeError, match="input input__0 has dtype int32, the model takes FP32"):
        load_evalset(dtype, DIGITS)
    np.savez(tmp_path / "inputs.npz", input__0=np.zeros((5, 64), np.float32))
    misnamed = tmp_path / "misnamed.npz"
    np.savez(misnamed, pixels=np.zeros((5, 64), np.float32))
    with pytest.raises(OptimizeError, match=r"no input 'input__0' \(has pixels\)"):
        load_evalset(misnamed, DIGITS)
    with pytest.raises(OptimizeError, match=r"unknown array\(s\) label; .* --label-column"):
        load_evalset(good, DIGITS)
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(4))
    with pytest.raises(OptimizeError, match="4 labels for 5 eval rows"):
        load_evalset(shape.with_name("inputs.npz"), DIGITS, labels_path=labels)
    with pytest.raises(OptimizeError, match="no label column 'y'"):
        load_evalset(good, DIGITS, label_column="y")
    with pytest.raises(OptimizeError, match="does not exist"):
        load_evalset(tmp_path / "missing.npz", DIGITS)
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(OptimizeError, match=r"cannot read \.npy"):
        load_evalset(pickled, DIGITS)


def test_jsonl_text_rows(tmp_path):
    path = tmp_path / "text.jsonl"
    path.write_text("\n".join(json.dumps({"TEXT": t, "y": i}) for i, t in enumerate(["a cat", "a dog"])) + "\n")
    loaded = load_evalset(path, TEXT, label_column="y")
    assert loaded.inputs["TEXT"].shape == (2, 1) and loaded.inputs["TEXT"][1, 0] == b"a dog"
    path.write_text('{"TEXT": 3}\n')
    with pytest.raises(OptimizeError, match="input TEXT is BYTES; give strings"):
        load_evalset(path, TEXT)


def test_figures_match_a_direct_computation():
    rng = np.random.default_rng(0)
    original = rng.dirichlet(np.ones(10), size=200).astype(np.float32)
    candidate = original.copy()
    candidate[:20] = np.roll(candidate[:20], 1, axis=1)  # 20 rows likely change their top-1
    labels = original.argmax(axis=1)
    labels[:7] = (labels[:7] + 1) % 10
    q = assess("classify", original, candidate, labels)
    assert q.agreement == pytest.approx(np.mean(original.argmax(1) == candidate.argmax(1)))
    assert q.accuracy == pytest.approx(np.mean(candidate.argmax(1) == labels))
    assert q.max_abs_diff == pytest.approx(float(np.abs(original - candidate).max()), rel=1e-6)
    assert infer_task(original, None) == "classify"

    emb = rng.normal(size=(50, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    noisy = emb + 0.05 * rng.normal(size=emb.shape)
    cosine = np.mean(np.sum(emb * noisy, 1) / np.linalg.norm(noisy, axis=1))
    assert infer_task(emb, None) == "embed"
    assert assess("embed", emb, noisy, None).quality == pytest.approx(cosine)


def test_verdict_and_winner_rule():
    assert judge(0.01, 0.01, "accuracy")[0] is True
    accepted, why = judge(0.0111, 0.01, "accuracy")
    assert not accepted and "exceeds 0.01" in why
    candidates = [
        Scored("fast-but-rejected", False, 900.0, 10),
        Scored("fast", True, 500.0, 80),
        Scored("same-speed-smaller", True, 500.0, 40),
        Scored("slower-and-bigger", True, 90.0, 200),
    ]
    assert pick_winner(candidates, original_rows_per_s=100.0, original_size=100) == "same-speed-smaller"
    # Nothing faster or smaller than the original: nothing is worth registering.
    assert pick_winner([Scored("slower-and-bigger", True, 90.0, 200)], 100.0, 100) is None
    assert pick_winner([Scored("slow-but-small", True, 90.0, 50)], 100.0, 100) == "slow-but-small"
    # Within 5 % of the original on both counts: noise, not a gain.
    assert pick_winner([Scored("re-saved", True, 104.0, 97)], 100.0, 100) is None
