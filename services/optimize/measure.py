"""Measure one candidate the way a worker runs it: through the worker's own engine.

The artifact is loaded by ``create_engine`` (so a candidate that measures is one a worker
can serve), warmed up, run over the whole eval set in batches of max_batch_size for its
outputs, then timed in-process: batch-1 latency (median of single-row calls) and rows/s at
each batch size the batcher would form (1, the preferred sizes, max_batch_size), keeping
the best. Threads come from the candidate's config, which copies the original's, so every
candidate runs with the same ``intra_op_threads`` / ``inter_op_threads``.
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


def measure(model: str, name: str, version_dir: Path, config: ModelConfig, evalset: EvalSet,
            seconds_per_point: float) -> Measurement:
    """Load, run and time one candidate; raises EngineLoadError / EngineError if it cannot serve."""
    from services.worker.engines import EngineSpec, create_engine

    engine = create_engine(EngineSpec(model, name, version_dir, config))
    engine.load()
    try:
        engine.warmup()
        step = max(config.max_batch_size, 1)
        chunks = [engine.infer(evalset.slice(i, i + step)) for i in range(0, evalset.rows, step)]
        first = config.outputs[0].name
        outputs = np.concatenate([c[first] for c in chunks])
        latency = _latency_ms(engine, evalset, seconds_per_point)
        throughput = {size: _rows_per_s(engine, evalset, size, seconds_per_point) for size in batch_sizes(config)
                      if size <= evalset.rows}
        best = max(throughput, key=lambda size: throughput[size])
        return Measurement(artifact_size(version_dir, config), latency, best, throughput[best], throughput, outputs)
    finally:
        engine.close()


def _latency_ms(engine: object, evalset: EvalSet, seconds: float) -> float:
    samples = []
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
