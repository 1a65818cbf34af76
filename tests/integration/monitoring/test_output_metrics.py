"""Model-output metrics on a standalone worker serving the example digits model."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.monitoring.support import DigitsClient
from tests.support.processes import start_service


@pytest.fixture(scope="module")
def worker(examples):
    proc = start_service(["worker", "--model-repository", str(examples), "--models", "digits", "--port", "0"])
    yield proc
    proc.terminate()


def _samples(worker, name: str) -> list:
    text = urllib.request.urlopen(worker.metrics_url, timeout=10).read().decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name and s.labels.get("version") == "2"]


def _infer(worker, rows: np.ndarray) -> np.ndarray:
    with DigitsClient(worker.address) as client:
        return client.infer(rows)


def _eventually(probe, check, what: str):
    deadline = time.monotonic() + 30  # a bound for a hung worker, not a timing claim
    while True:
        value = probe()
        if check(value):
            return value
        assert time.monotonic() < deadline, f"{what}: last {value}"
        time.sleep(0.1)


def test_classes_confidence_and_nonfinite(worker, digits_sets):
    held_out = np.load(digits_sets[0])["input__0"].astype(np.float32)[:40]
    predicted = np.concatenate([_infer(worker, held_out[i:i + 8]) for i in range(0, 40, 8)]).argmax(axis=1)

    classes = _eventually(lambda: _samples(worker, "shunter_prediction_class_total"),
                          lambda s: sum(x.value for x in s) == 40, "40 predictions counted")
    by_class = {s.labels["class"]: s.value for s in classes}
    assert by_class == {str(c): float((predicted == c).sum()) for c in range(10)}
    assert {s.labels["output"] for s in classes} == {"output__0"}
    count = [s for s in _samples(worker, "shunter_prediction_confidence_count")]
    assert count[0].value == 40
    le = {s.labels["le"]: s.value for s in _samples(worker, "shunter_prediction_confidence_bucket")}
    assert le["+Inf"] == 40 and le["0.1"] == 0  # ten classes: the top probability is at least 0.1

    nan_rows = np.full((2, 64), np.nan, np.float32)
    _infer(worker, nan_rows)
    nonfinite = _eventually(
        lambda: {s.labels["kind"]: s.value for s in _samples(worker, "shunter_output_nonfinite_total")},
        lambda v: v.get("nan", 0) == 20, "NaN outputs counted",
    )
    assert nonfinite["inf"] == 0
    # NaN rows are not predictions: the class counts did not move.
    assert sum(s.value for s in _samples(worker, "shunter_prediction_class_total")) == 40
