"""Worker-only Prometheus metrics: queue depth and time, compute time, batch size, load."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.metrics import LATENCY_BUCKETS_S

QUEUE_DEPTH = Gauge(
    "shunter_worker_queue_depth", "Requests waiting in a version's queue.", ["model", "version"]
)
QUEUE_DURATION = Histogram(
    "shunter_worker_queue_duration_seconds",
    "Time a request waited in the queue before its batch started.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS_S,
)
COMPUTE_DURATION = Histogram(
    "shunter_worker_compute_duration_seconds",
    "Time one batch spent in the engine (including concatenation and split).",
    ["model", "version"],
    buckets=LATENCY_BUCKETS_S,
)
BATCH_SIZE = Histogram(
    "shunter_worker_batch_size_rows",
    "Rows per executed batch.",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

BATCHES = Counter(
    "shunter_worker_batches",
    "Batches executed, by the batching rule that sent them (full, preferred, delay, expected, "
    "oversize, incompatible, unbatched).",
    ["model", "version", "reason"],
)


class LoadSource(Protocol):
    """What the load gauge reads from a version's batcher (batching.batcher.Batcher)."""

    @property
    def rows_per_instance(self) -> float: ...


class RowsPerInstanceCollector(Collector):
    """``shunter_worker_rows_per_instance``: rows queued or running per engine instance.

    The autoscaling signal (deploy/k8s): a batching server is limited by how much work
    waits for each engine instance, not by CPU, and an autoscaler needs a gauge it can
    average and compare with a target; a counter (TorchServe's queue metric) only grows,
    so an HPA on it scales up for ever. Read at scrape time from the batchers, so the
    request path pays nothing for it; a version appears while its batcher is tracked
    (loaded) and disappears when it unloads.
    """

    NAME = "shunter_worker_rows_per_instance"
    HELP = "Rows queued or running in a version's batcher, per engine instance (scale workers on it)."

    def __init__(self) -> None:
        self._sources: dict[int, tuple[str, str, LoadSource]] = {}

    def track(self, model: str, version: str, source: LoadSource) -> None:
        self._sources[id(source)] = (model, version, source)

    def untrack(self, source: LoadSource) -> None:
        self._sources.pop(id(source), None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["model", "version"])
        # Called from the metrics HTTP thread: list() copies the dict in one step under the GIL.
        for model, version, source in list(self._sources.values()):
            family.add_metric([model, version], source.rows_per_instance)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Without describe(), registering would call collect() once to learn the names.
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["model", "version"])


ROWS_PER_INSTANCE = RowsPerInstanceCollector()
REGISTRY.register(ROWS_PER_INSTANCE)
