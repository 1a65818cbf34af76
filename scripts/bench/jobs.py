#!/usr/bin/env python3
"""Throughput of `shunter batch` and `shunter stream` against the worker's own served rows/s.

One worker on examples/models (digits, FP32[64] → FP32[10]) and a private redis-server;
then, for the same model and rows per request:

  worker served rows/s   `shunter bench --batch-rows R --concurrency C` (the ceiling)
  batch rows/s           `shunter batch` over a parquet file of N rows, R rows per request
  stream events/s        M events (JSON inputs) drained by K consumers at --batch R

  .venv/bin/python scripts/bench/jobs.py [--rows 200000] [--events 20000] [--rows-per-request 64]
                                          [--concurrency 8] [--consumers 1] [--duration 5] [--json]

Figures depend on the machine and its load; the script prints the CPU count with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.support.processes import start_redis, start_service  # noqa: E402

SHUNTER = [sys.executable, "-m", "services.cli.main"]
STREAM_READY = "shunter stream consuming "


def shunter_json(*args: str) -> dict:
    done = subprocess.run([*SHUNTER, *args, "--json"], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"shunter {args[0]} failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker_rows_per_s(target: str, rows: int, concurrency: int, duration: float) -> float:
    report = shunter_json("bench", "--target", target, "--model", "digits", "--batch-rows", str(rows),
                          "--concurrency", str(concurrency), "--duration", str(duration))
    return float(report["rows_per_s"])


def batch_rows_per_s(target: str, tmp: Path, rows: int, per_request: int, concurrency: int) -> dict:
    x = np.random.default_rng(0).uniform(0, 16, size=(rows, 64)).astype(np.float32)
    source = tmp / "rows.parquet"
    pq.write_table(pa.table({"input__0": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 64)}), source,
                   row_group_size=65536)
    return shunter_json("batch", "digits", "--input", str(source), "--output", str(tmp / "out"), "--target", target,
                        "--rows-per-request", str(per_request), "--concurrency", str(concurrency))


def stream_events_per_s(target: str, events: int, batch: int, consumers: int) -> float:
    server = start_redis()
    procs: list[subprocess.Popen] = []
    try:
        r = redis.Redis.from_url(server.url)
        x = np.random.default_rng(1).uniform(0, 16, size=(events, 64)).astype(np.float32)
        pipe = r.pipeline(transaction=False)
        for row in x:
            pipe.xadd("in", {"inputs": json.dumps({"input__0": row.tolist()})})
        pipe.execute()
        # The group starts past the events, so nothing is consumed until every consumer is up.
        r.xgroup_create("in", "g", id="$")
        for index in range(consumers):
            proc = subprocess.Popen(
                [*SHUNTER, "stream", "digits", "--redis-url", server.url, "--input-stream", "in", "--output-stream",
                 "out", "--group", "g", "--consumer", f"c{index}", "--target", target, "--batch", str(batch)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
            procs.append(proc)
        for proc in procs:
            line = "-"
            while line and not line.startswith(STREAM_READY):
                line = proc.stdout.readline()
            if not line:
                raise SystemExit("a stream consumer exited before it was ready")
        started = time.monotonic()
        r.xgroup_setid("in", "g", "0")
        while r.xlen("out") < events:
            time.sleep(0.01)
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a stream consumer exited early")
        return events / (time.monotonic() - started)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rows-per-request", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--consumers", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    worker = start_service(["worker", "--model-repository", str(ROOT / "examples" / "models"), "--models", "digits",
                            "--port", "0"])
    try:
        served = worker_rows_per_s(worker.address, args.rows_per_request, args.concurrency, args.duration)
        with tempfile.TemporaryDirectory(prefix="shunter-bench-jobs-") as tmp:
            batch = batch_rows_per_s(worker.address, Path(tmp), args.rows, args.rows_per_request, args.concurrency)
        stream = stream_events_per_s(worker.address, args.events, args.rows_per_request, args.consumers)
    finally:
        worker.terminate()
    result = {
        "cpus": os.cpu_count(), "rows_per_request": args.rows_per_request, "concurrency": args.concurrency,
        "worker_served_rows_per_s": round(served, 1), "batch_rows": args.rows,
        "batch_rows_per_s": batch["rows_per_s"], "batch_vs_worker": round(batch["rows_per_s"] / served, 3),
        "stream_events": args.events, "stream_consumers": args.consumers,
        "stream_events_per_s": round(stream, 1), "stream_vs_worker": round(stream / served, 3),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"digits, {args.rows_per_request} rows per request, {os.cpu_count()} CPUs")
    for column in ("what", "rows/s", "× worker"):
        table.add_column(column)
    table.add_row(f"worker served (shunter bench, concurrency {args.concurrency})", f"{served:,.0f}", "1.00")
    table.add_row(f"shunter batch ({args.rows:,} rows, concurrency {args.concurrency})",
                  f"{batch['rows_per_s']:,.0f}", f"{result['batch_vs_worker']:.2f}")
    table.add_row(f"shunter stream ({args.events:,} events, {args.consumers} consumer(s), batch "
                  f"{args.rows_per_request})", f"{stream:,.0f}", f"{result['stream_vs_worker']:.2f}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
