"""Shadow comparisons: the largest difference, argmax flips, samples; and their summary."""

from __future__ import annotations

import json
import math

import numpy as np

from services.common import version_windows as vw
from services.gen.inference import grpc_service_pb2 as pb
from services.registry.rollout.shadow_report import summarise
from services.router.shadow import compare_outputs, request_heads


def response(rows, name="y") -> pb.ModelInferResponse:
    values = np.asarray(rows, dtype="<f4")
    out = pb.ModelInferResponse(model_name="m")
    out.outputs.add(name=name, datatype="FP32", shape=list(values.shape))
    out.raw_output_contents.append(values.tobytes())
    return out


def test_close_outputs_agree_and_keep_their_label() -> None:
    outcome = compare_outputs(response([[0.1, 0.9], [0.7, 0.3]]), response([[0.1, 0.9000001], [0.7, 0.3]]))
    assert outcome.agree and outcome.sample is None
    assert outcome.argmax_rows == 2 and outcome.argmax_flips == 0 and outcome.max_abs_diff < 1e-6


def test_a_flipped_label_is_counted_and_sampled() -> None:
    outcome = compare_outputs(response([[0.1, 0.9], [0.7, 0.3]]), response([[0.6, 0.4], [0.7, 0.3]]))
    assert not outcome.agree and (outcome.argmax_rows, outcome.argmax_flips) == (2, 1)
    assert math.isclose(outcome.max_abs_diff, 0.5, rel_tol=1e-6)
    assert outcome.sample["shadow"]["y"][:2] == [np.float32(0.6), np.float32(0.4)]


def test_a_missing_output_is_an_infinite_difference() -> None:
    outcome = compare_outputs(response([[1.0, 2.0]]), response([[1.0, 2.0]], name="z"))
    assert not outcome.agree and math.isinf(outcome.max_abs_diff) and outcome.sample["max_abs_diff"] is None


def test_request_heads_are_truncated() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 100])
    request.raw_input_contents.append(np.arange(100, dtype="<f4").tobytes())
    assert request_heads(request.SerializeToString()) == {"x": [float(i) for i in range(vw.SAMPLE_VALUES)]}


def test_summary_has_wilson_intervals_and_the_difference_distribution() -> None:
    stats = vw.ShadowStats(compared=200, agree=190, errors=2, argmax_rows=198, argmax_flips=4)
    stats.diffs[vw.diff_bucket(1e-7)] = 190
    stats.diffs[vw.diff_bucket(0.3)] = 8
    summary = summarise("2", stats, [json.dumps({"inputs": {}}).encode(), b"not json"])
    assert summary["agreement"] == 0.95 and summary["agreement_low"] < 0.95 < summary["agreement_high"]
    assert summary["flip_rate"] == 4 / 198 and summary["flip_rate_high"] > summary["flip_rate"]
    assert [(d["upper"], d["count"]) for d in summary["max_abs_diff"]] == [(1e-7, 190), (1.0, 8)]
    assert summary["samples"] == [{"inputs": {}}]
    empty = summarise("3", vw.ShadowStats(), [])
    assert math.isnan(empty["agreement"]) and math.isnan(empty["shadow_p99_ms"])
