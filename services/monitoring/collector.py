"""Prometheus families for the model-output metrics, read from the monitors at scrape time.

- ``shunter_prediction_class_total{model,version,output,class}`` counter
- ``shunter_prediction_confidence{model,version,output}`` histogram (0..1)
- ``shunter_output_nonfinite_total{model,version,output,kind}`` counter, kind nan | inf
- ``shunter_output_value{model,version,output,quantile}`` gauge: regression outputs,
  over the last outputs.RECENT values
- ``shunter_output_norm{model,version,output,quantile}`` gauge: embedding row norms, likewise
- ``shunter_monitor_dropped_batches_total{model,version}`` counter: batches the monitor
  thread skipped because it was behind (their outputs and drift counts are missing)
- ``shunter_monitor_drift_rows_total{model,version}`` counter: rows counted for drift
- ``shunter_monitor_profile{model,version,profile_id}`` gauge, 1: the reference profile
  this worker counts drift against (absent: none yet, so no drift counts from here)

A version's series appear while it is loaded with a ``monitoring:`` block.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from services.monitoring.observer import MONITORS, MonitorRegistry, VersionMonitor
from services.monitoring.outputs import CONFIDENCE_BUCKETS, QUANTILES

_VO = ["model", "version", "output"]


def _families() -> dict[str, Metric]:
    return {
        "classes": CounterMetricFamily(
            "shunter_prediction_class", "Predicted classes (argmax) per monitored classification output.",
            labels=[*_VO, "class"]),
        "confidence": HistogramMetricFamily(
            "shunter_prediction_confidence", "Top class probability of each prediction (max softmax).",
            labels=_VO),
        "nonfinite": CounterMetricFamily(
            "shunter_output_nonfinite", "NaN and Inf elements in monitored outputs.", labels=[*_VO, "kind"]),
        "value": GaugeMetricFamily(
            "shunter_output_value", "Quantiles of a regression output's recent values.", labels=[*_VO, "quantile"]),
        "norm": GaugeMetricFamily(
            "shunter_output_norm", "Quantiles of an embedding output's recent row L2 norms.",
            labels=[*_VO, "quantile"]),
        "dropped": CounterMetricFamily(
            "shunter_monitor_dropped_batches", "Batches not monitored because the monitor thread was behind.",
            labels=["model", "version"]),
        "drift_rows": CounterMetricFamily(
            "shunter_monitor_drift_rows", "Rows counted into drift windows.", labels=["model", "version"]),
        "profile": GaugeMetricFamily(
            "shunter_monitor_profile", "The reference profile drift is counted against (1 while there is one).",
            labels=["model", "version", "profile_id"]),
    }


class OutputCollector(Collector):
    def __init__(self, monitors: MonitorRegistry) -> None:
        self._monitors = monitors

    def track(self, monitor: VersionMonitor) -> None:
        self._monitors.track(monitor)

    def untrack(self, monitor: VersionMonitor) -> None:
        self._monitors.untrack(monitor)

    def collect(self) -> Iterator[Metric]:
        families = _families()
        for monitor in self._monitors.all():
            mv = [monitor.model, monitor.version]
            families["dropped"].add_metric(mv, monitor.dropped)
            families["drift_rows"].add_metric(mv, monitor.rows)
            if monitor.profile_id:
                families["profile"].add_metric([*mv, monitor.profile_id], 1)
            for name, stats in monitor.outputs.items():
                labels = [*mv, name]
                snap = stats.snapshot()
                families["nonfinite"].add_metric([*labels, "nan"], snap["nan"])
                families["nonfinite"].add_metric([*labels, "inf"], snap["inf"])
                if stats.kind == "classification":
                    for label, count in zip(stats.labels, snap["classes"].tolist(), strict=True):
                        families["classes"].add_metric([*labels, label], count)
                    cumulative = snap["confidence"].cumsum().tolist()
                    buckets = [(str(b), c) for b, c in zip(CONFIDENCE_BUCKETS, cumulative, strict=False)]
                    buckets.append(("+Inf", cumulative[-1]))
                    families["confidence"].add_metric(labels, buckets, snap["confidence_sum"])
                elif snap["quantiles"] is not None:
                    family = families["norm" if stats.kind == "embedding" else "value"]
                    for q, v in zip(QUANTILES, snap["quantiles"].tolist(), strict=True):
                        family.add_metric([*labels, str(q)], v)
        yield from families.values()

    def describe(self) -> Iterator[Metric]:
        yield from _families().values()


COLLECTOR = OutputCollector(MONITORS)
REGISTRY.register(COLLECTOR)
