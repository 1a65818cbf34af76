"""Model-output statistics of one batch, and the monitoring block of config.yaml."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.errors import ModelConfigError
from services.common.model_config import parse_model_config
from services.monitoring.outputs import CONFIDENCE_BUCKETS, MAX_CLASS_LABELS, OutputStats

DIGITS = """
backend: onnx
max_batch_size: 8
inputs: [{name: input__0, datatype: FP32, shape: [64]}]
outputs: [{name: output__0, datatype: FP32, shape: [10]}]
"""


def test_probabilities_give_classes_and_top_probability():
    stats = OutputStats("out", "classification", (3,))
    stats.observe(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.05, 0.9, 0.05]], np.float64))
    snap = stats.snapshot()
    assert snap["classes"].tolist() == [1, 1, 1]
    assert snap["confidence_sum"] == pytest.approx(0.7 + 0.8 + 0.9)
    # 0.7 -> bucket le=0.7, 0.8 -> le=0.8, 0.9 -> le=0.9
    hit = [CONFIDENCE_BUCKETS[i] for i in np.flatnonzero(snap["confidence"])]
    assert hit == [0.7, 0.8, 0.9]


def test_logits_go_through_softmax():
    stats = OutputStats("out", "classification", (2,))
    stats.observe(np.array([[0.0, 0.0], [3.0, -3.0]]))
    snap = stats.snapshot()
    assert snap["classes"].tolist() == [2, 0]
    assert snap["confidence_sum"] == pytest.approx(0.5 + 1 / (1 + np.exp(-6)))


def test_nan_and_inf_are_counted_and_their_rows_skipped():
    stats = OutputStats("out", "classification", (2,))
    stats.observe(np.array([[np.nan, 1.0], [np.inf, -np.inf], [0.2, 0.8]]))
    snap = stats.snapshot()
    assert (snap["nan"], snap["inf"]) == (1, 2)
    assert snap["classes"].tolist() == [0, 1]


def test_class_labels_are_bounded():
    stats = OutputStats("out", "classification", (MAX_CLASS_LABELS + 50,))
    assert len(stats.labels) == MAX_CLASS_LABELS + 1 and stats.labels[-1] == "other"
    row = np.zeros((1, MAX_CLASS_LABELS + 50))
    row[0, -1] = 5.0
    stats.observe(row)
    assert stats.snapshot()["classes"][-1] == 1


def test_embedding_norms_and_regression_quantiles():
    emb = OutputStats("e", "embedding", (2,))
    emb.observe(np.array([[3.0, 4.0]] * 10))
    assert emb.snapshot()["quantiles"].tolist() == pytest.approx([5.0] * 5)
    reg = OutputStats("r", "regression", (1,))
    reg.observe(np.arange(101, dtype=np.float64)[:, None])
    assert reg.snapshot()["quantiles"][2] == pytest.approx(50.0)


def test_monitoring_block_parses_with_defaults():
    config = parse_model_config(DIGITS + "monitoring: {outputs: {output__0: classification}}\n", "config.yaml")
    assert config.monitoring.outputs == {"output__0": "classification"}
    assert config.monitoring.drift.psi == (0.1, 0.25)
    assert config.monitoring.drift.window_s == 60


@pytest.mark.parametrize(
    ("block", "named"),
    [
        ("{outputs: {output__0: histogram}}", "monitoring.outputs.output__0"),
        ("{outputs: {nope: classification}}", "'nope'"),
        ("{drift: {psi: [0.3, 0.1]}}", "monitoring.drift.psi"),
        ("{drift: {window_s: 0}}", "monitoring.drift.window_s"),
        ("{drift: {method: chi2}}", "monitoring.drift.method"),
        ("{colour: red}", "monitoring.colour"),
    ],
    ids=["kind", "output", "bands", "window", "method", "unknown-key"],
)
def test_bad_monitoring_values_name_the_key(block, named):
    with pytest.raises(ModelConfigError) as info:
        parse_model_config(DIGITS + f"monitoring: {block}\n", "m/config.yaml")
    assert named in str(info.value) and "m/config.yaml" in str(info.value)


def test_classification_of_a_variable_width_output_is_refused():
    text = DIGITS.replace("shape: [10]", "shape: [-1]") + "monitoring: {outputs: {output__0: classification}}\n"
    with pytest.raises(ModelConfigError, match="classification needs a fixed number of classes"):
        parse_model_config(text, "config.yaml")
    regression = DIGITS.replace("shape: [10]", "shape: [-1]") + "monitoring: {outputs: {output__0: regression}}\n"
    assert parse_model_config(regression, "config.yaml").monitoring.outputs == {"output__0": "regression"}
