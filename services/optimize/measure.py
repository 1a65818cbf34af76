"""Measure one candidate the way a worker runs it: through the worker's own engine.

The artifact is loaded by ``create_engine`` (so a candidate that measures is one a worker
can serve), warmed up and run over the whole eval set in batches of max_batch_size for its
outputs. Once every candidate is loaded they are timed in-process, round-robin over several
rounds: batch-1 latency (median of single-row calls) and rows/s at each batch size the
batcher would form (1, the preferred sizes, max_batch_size); each figure is the best over
the rounds, and the best batch size is reported. Threads come from the candidate's config,
which copies the original's, so every candidate runs with the same ``intra_op_threads`` / ``inter_op_threads``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.model_config import ModelConfig
from services.optimize.evalset import EvalSet


@dataclass(frozen=True)
class Measurement:
    size_bytes: int
    latency_b1_ms: float
    best_batch: int
    best_rows_per_s: float
    rows_per_s: dict[int, float]
    #: The first output over the whole eval set, in eval order.
    outputs: np.ndarray


def batch_sizes(config: ModelConfig) -> list[int]:
    preferred = config.dynamic_batching.preferred_batch_sizes if config.dynamic_batching else []
    return sorted({1, *preferred, config.max_batch_size})


def artifact_size(version_dir: Path, config: ModelConfig) -> int:
    path = version_dir / config.artifact_name
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


class Loaded:
    """A candidate loaded in the worker's engine, with its eval outputs; timed later, in rounds."""

    def __init__(self, model: str, name: str, version_dir: Path, config: ModelConfig, evalset: EvalSet):
        from services.worker.engines import EngineSpec, create_engine

        self.config = config
        self.size_bytes = artifact_size(version_dir, config)
        self.engine = create_engine(EngineSpec(model, name, version_dir, config))
        self.engine.load()
        try:
            self.engine.warmup()
            step = max(config.max_batch_size, 1)
            chunks = [self.engine.infer(evalset.slice(i, i + step)) for i in range(0, evalset.rows, step)]
            self.outputs = np.concatenate([c[config.outputs[0].name] for c in chunks])
        except BaseException:
            self.engine.close()
            raise
        self.latency_b1_ms = float("inf")
        self.rows_per_s: dict[int, float] = {}

    def time_round(self, evalset: EvalSet, seconds_per_point: float) -> None:
        """One timing round; the best of all rounds is kept (the least disturbed by other work)."""
        self.latency_b1_ms = min(self.latency_b1_ms, _latency_ms(self.engine, evalset, seconds_per_point))
        for size in batch_sizes(self.config):
            if size <= evalset.rows:
                rate = _rows_per_s(self.engine, evalset, size, seconds_per_point)
                self.rows_per_s[size] = max(self.rows_per_s.get(size, 0.0), rate)

    def measurement(self) -> Measurement:
        best = max(self.rows_per_s, key=lambda size: self.rows_per_s[size])
        return Measurement(self.size_bytes, self.latency_b1_ms, best, self.rows_per_s[best], dict(self.rows_per_s),
                           self.outputs)

    def close(self) -> None:
        self.engine.close()


def time_all(loaded: list[Loaded], evalset: EvalSet, seconds_per_point: float, rounds: int) -> None:
    """Time every candidate ``rounds`` times, round-robin, so a burst of other work on the
    machine lands on all of them alike instead of on whichever was being timed."""
    for _ in range(rounds):
        for candidate in loaded:
            candidate.time_round(evalset, seconds_per_point)


def _latency_ms(engine: object, evalset: EvalSet, seconds: float) -> float:
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    row = 0
    while len(samples) < 20 or time.perf_counter() < deadline:
        batch = evalset.slice(row, row + 1)
        start = time.perf_counter()
        engine.infer(batch)  # type: ignore[attr-defined]
        samples.append(time.perf_counter() - start)
        row = (row + 1) % evalset.rows
        if len(samples) >= 100_000:
            break
    return statistics.median(samples) * 1000


def _rows_per_s(engine: object, evalset: EvalSet, size: int, seconds: float) -> float:
    batch = evalset.slice(0, size)
    engine.infer(batch)  # type: ignore[attr-defined]
    calls = 0
    start = time.perf_counter()
    while True:
        engine.infer(batch)  # type: ignore[attr-defined]
        calls += 1
        elapsed = time.perf_counter() - start
        if calls >= 5 and elapsed >= seconds:
            return calls * size / elapsed
