#!/usr/bin/env python3
"""Run a small `shunter batch` job: the digits data set as parquet through a worker, with its progress bar."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.jobs.output import read_output
from tests.support.processes import start_service

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    digits = load_digits()
    repeat = 20  # about 36,000 rows: long enough to watch the bar move
    x = np.tile(digits.data.astype(np.float32), (repeat, 1))
    labels = np.tile(digits.target, repeat)
    worker = start_service(["worker", "--model-repository", str(ROOT / "examples" / "models"), "--models", "digits",
                            "--port", "0"])
    try:
        with tempfile.TemporaryDirectory(prefix="shunter-batch-demo-") as tmp:
            source = Path(tmp) / "digits.parquet"
            pixels = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 64)
            pq.write_table(pa.table({"input__0": pixels, "label": labels}), source, row_group_size=4096)
            out = Path(tmp) / "predictions"
            command = [sys.executable, "-m", "services.cli.main", "batch", "digits", "--input", str(source),
                       "--output", str(out), "--target", worker.address, "--rows-per-request", "64",
                       "--concurrency", "8", "--chunk-rows", "4096"]
            print("$ shunter batch digits --input digits.parquet --output predictions --target", worker.address)
            done = subprocess.run(command, cwd=ROOT)
            if done.returncode != 0:
                return done.returncode
            result = read_output(out)
            predicted = result["output__0"].argmax(axis=1)
            accuracy = float((predicted == labels[result["row"]]).mean())
            print(f"batch: {len(result['row'])} rows in order, accuracy {accuracy:.3f} "
                  f"({len(list(out.iterdir())) - 1} chunk files and a manifest)")
    finally:
        worker.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
