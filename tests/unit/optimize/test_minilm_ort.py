"""ONNX Runtime int8 on MiniLM (an ONNX model behind a tokenising handler): dynamic gives
integer MatMuls, static gives QDQ pairs calibrated through the handler, and the reported
cosine agreement matches one computed here with ONNX Runtime and the handler directly."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from services.optimize import plan, runner, source
from services.optimize.evalset import load_evalset
from services.worker.engines.python_handler import import_handler
from tests.support.models import build_examples

pytestmark = pytest.mark.slow

SENTENCES = [f"{s} {v} {o}." for s, v, o in itertools.product(
    ["The cat", "A doctor", "Our team", "The old train"],
    ["quietly crossed", "refused to approve", "slowly repaired"],
    ["the broken bridge", "a plan for the summer", "the quarterly budget"],
)]


def _embed(model_dir, artifact, texts):
    """Embeddings computed without the engine: the handler's pre/post around a bare session."""
    handler = import_handler(model_dir / "handler.py", "minilm", "independent")
    handler.load(model_dir.resolve())
    batch = np.empty((len(texts), 1), dtype=object)
    batch[:, 0] = [t.encode() for t in texts]
    tensors = handler.preprocess({"TEXT": batch})
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    (tokens,) = session.run(["token_embeddings"], {k: tensors[k] for k in ("input_ids", "attention_mask")})
    return handler.postprocess({"token_embeddings": tokens}, tensors)["EMBEDDING"]


def test_ort_int8_on_minilm(tmp_path, caplog):
    # ONNX Runtime's quantiser logs every node at WARNING on the root logger; caplog restores the level.
    caplog.set_level(logging.ERROR)
    repo = build_examples()
    original = source.from_repository(repo, "minilm", "1")
    path = tmp_path / "sentences.jsonl"
    path.write_text("".join(json.dumps({"TEXT": t}) + "\n" for t in SENTENCES))
    evals = load_evalset(path, original.config)
    techniques = plan.parse_try("quantize-dynamic,quantize-static:calibrate=16", "onnx")
    outcome = runner.run(original, evals, techniques, tmp_path / "work", 0.01, seconds_per_point=0.01)
    assert outcome.task == "embed"

    dynamic = outcome.result("quantize-dynamic")
    ops = [n.op_type for n in onnx.load(str(dynamic.directory / "model.onnx")).graph.node]
    assert ops.count("MatMulInteger") >= 30
    assert dynamic.measurement.size_bytes * 3 < outcome.results[0].measurement.size_bytes  # int8 weights

    static = outcome.result("quantize-static:calibrate=16")
    ops = [n.op_type for n in onnx.load(str(static.directory / "model.onnx")).graph.node]
    assert ops.count("QuantizeLinear") >= 30 and ops.count("DequantizeLinear") >= 30
    assert static.properties["calibration_rows"] == 16

    reference = _embed(repo / "minilm", original.artifact_path, SENTENCES)
    for result in (dynamic, static):
        mine = _embed(repo / "minilm", result.directory / "model.onnx", SENTENCES)
        cosine = float(np.mean(np.sum(reference * mine, axis=1)))
        assert result.quality.agreement == pytest.approx(cosine, abs=1e-4), result.name
        assert result.status == ("accepted" if 1 - cosine <= 0.01 else "rejected")
