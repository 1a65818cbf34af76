#!/usr/bin/env python
"""The physical limit: one model's engine in-process, rows/s at batch 1, 2, 4, ... max.

Runs in its own process (the report starts one per engine and run), so each measurement
starts from a fresh interpreter with only that engine's library loaded and its thread
settings untouched by other engines. The engine is built exactly as the worker builds
it (create_engine, with the model's handler around it when it has one) and fed the
inputs `shunter bench` sends (random values; short sentences for BYTES).

    .venv/bin/python scripts/bench/report_engine.py --model-repository examples/models \
        --model digits --version 2 --seconds 0.5

Prints one JSON object: {"model", "version", "backend", "rows_per_s": {batch: rows/s}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.bench.payload import InputPlan, make_inputs  # noqa: E402
from services.common.model_config import load_version_config  # noqa: E402
from services.worker.engines import EngineSpec, create_engine  # noqa: E402

#: Length of -1 dimensions, as `shunter bench` uses by default.
DIM_LENGTH = 16


def batch_sizes(limit: int) -> list[int]:
    """1, 2, 4, ... below the limit, then the limit itself."""
    sizes = [1]
    while sizes[-1] * 2 < limit:
        sizes.append(sizes[-1] * 2)
    if limit > 1:
        sizes.append(limit)
    return sizes


def measure(repository: Path, model: str, version: str, seconds: float) -> dict:
    config = load_version_config(repository / model, version)
    engine = create_engine(EngineSpec(model, version, repository / model / version, config))
    engine.load()
    engine.warmup()
    rng = np.random.default_rng(0)
    results: dict[int, float] = {}
    try:
        for batch in batch_sizes(max(config.max_batch_size, 1)):
            rows = (batch,) if config.max_batch_size else ()
            plans = [
                InputPlan(t.name, t.datatype, rows + tuple(DIM_LENGTH if d == -1 else d for d in t.shape))
                for t in config.inputs
            ]
            inputs = make_inputs(plans, rng)
            engine.infer(inputs)  # the first call at a new shape may allocate
            runs, started = 0, time.perf_counter()
            while True:
                engine.infer(inputs)
                runs += 1
                elapsed = time.perf_counter() - started
                if elapsed >= seconds and runs >= 3:
                    break
            results[batch] = batch * runs / elapsed
    finally:
        engine.close()
    return {"model": model, "version": version, "backend": config.backend, "rows_per_s": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--seconds", type=float, default=0.5, help="time per batch size (default 0.5)")
    args = parser.parse_args()
    print(json.dumps(measure(args.model_repository, args.model, args.version, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
