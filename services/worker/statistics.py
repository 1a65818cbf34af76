"""Per-version counters in the shape of Triton's ModelStatistics.

Kept as plain integers updated on the event loop (batch callbacks run there), so
ModelStatistics reports the same numbers the Prometheus metrics count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from services.worker.batching.batcher import BatchTiming


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchSizeStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class VersionStatistics:
    #: Rows inferred successfully (Triton counts each batched inference).
    inference_count: int = 0
    #: Batches executed.
    execution_count: int = 0
    #: Milliseconds since the epoch of the last successful request.
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    by_batch_size: dict[int, BatchSizeStats] = field(default_factory=dict)

    def record_batch(self, timing: BatchTiming) -> None:
        self.execution_count += 1
        self.inference_count += timing.rows
        per_request = timing.requests
        self.compute_input.add(timing.input_ns * per_request, per_request)
        self.compute_infer.add(timing.infer_ns * per_request, per_request)
        self.compute_output.add(timing.output_ns * per_request, per_request)
        for queue_ns in timing.queue_ns:
            self.queue.add(queue_ns)
        bucket = self.by_batch_size.setdefault(timing.rows, BatchSizeStats())
        bucket.compute_input.add(timing.input_ns)
        bucket.compute_infer.add(timing.infer_ns)
        bucket.compute_output.add(timing.output_ns)

    def record_request(self, ok: bool, duration_ns: int) -> None:
        if ok:
            self.success.add(duration_ns)
            self.last_inference_ms = int(time.time() * 1000)
        else:
            self.fail.add(duration_ns)
