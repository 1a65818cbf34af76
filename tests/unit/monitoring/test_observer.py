"""A version's monitor: batches into output statistics and tumbling drift windows (fake clock)."""

from __future__ import annotations

import numpy as np

from services.common.model_config import parse_model_config
from services.monitoring.features import plan_features
from services.monitoring.observer import MonitorThread, VersionMonitor
from services.monitoring.profile import build_profile

CONFIG = """
backend: onnx
max_batch_size: 8
inputs: [{name: x, datatype: FP32, shape: [2]}]
outputs: [{name: y, datatype: FP32, shape: [3]}]
monitoring: {outputs: {y: classification}, drift: {window_s: 10}}
"""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _monitor(clock: Clock) -> VersionMonitor:
    config = parse_model_config(CONFIG, "config.yaml")
    monitor = VersionMonitor("m", "1", config, clock=clock)
    plan = plan_features(config.inputs, 128)
    sample = {"x": np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)}
    monitor.set_profile(build_profile(plan, sample, 200, 5))
    return monitor


def _batch(rows: int) -> tuple[dict, dict]:
    return {"x": np.zeros((rows, 2), np.float32)}, {"y": np.tile([0.1, 0.7, 0.2], (rows, 1))}


def test_batches_go_to_the_window_they_ran_in_and_leave_once_it_ends():
    clock = Clock(1000.0)  # window 100 covers [1000, 1010)
    monitor = _monitor(clock)
    monitor.observe(*_batch(3), at=1001.0)
    monitor.observe(*_batch(4), at=1009.9)
    monitor.observe(*_batch(5), at=1010.0)  # next window
    assert monitor.take_complete_windows() == []  # window 100 has not ended at 1000
    clock.now = 1010.5
    (done,) = monitor.take_complete_windows()
    assert (done.window, done.rows, done.window_s) == (100, 7, 10.0)
    assert done.counts.sum() == 7 * 2  # two features per row
    assert monitor.take_complete_windows() == []  # taken once
    clock.now = 1025.0
    (later,) = monitor.take_complete_windows()
    assert (later.window, later.rows) == (101, 5)
    assert monitor.outputs["y"].snapshot()["classes"].tolist() == [0, 12, 0]


def test_no_profile_no_drift_counts_but_output_metrics_still():
    clock = Clock(0.0)
    monitor = _monitor(clock)
    monitor.set_profile(None)
    monitor.observe(*_batch(2), at=0.0)
    clock.now = 100.0
    assert monitor.take_complete_windows() == [] and monitor.profile_id == ""
    assert monitor.outputs["y"].snapshot()["classes"].sum() == 2


def test_wrapped_engine_call_returns_the_outputs_and_is_observed_on_the_monitor_thread():
    clock = Clock(50.0)
    monitor = _monitor(clock)
    inputs, outputs = _batch(6)
    wrapped = monitor.wrap(lambda _inputs: outputs)
    assert wrapped(inputs) is outputs
    MonitorThread.shared().flush()
    assert monitor.rows == 6 and monitor.dropped == 0


def test_batches_from_before_and_after_a_profile_arrives_are_counted_apart():
    clock = Clock(0.0)
    monitor = _monitor(clock)
    inputs, outputs = _batch(3)
    # The first batch came while there was no profile (no inputs handed over), the next with one.
    monitor.observe_batches([({}, outputs, 1.0), (inputs, outputs, 2.0), ({}, outputs, 3.0)])
    clock.now = 20.0
    (window,) = monitor.take_complete_windows()
    assert window.rows == 3
    assert monitor.outputs["y"].snapshot()["classes"].sum() == 9
