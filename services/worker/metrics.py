"""Worker-only Prometheus metrics: queue depth and time, compute time, batch size."""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

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
