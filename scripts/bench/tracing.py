#!/usr/bin/env python
"""Tracing cost (issue 13 §2): throughput with tracing off against sampled tracing.

For each setting a one-worker cluster comes up with `shunter up` on the example models
(tracing off, or every service exporting to an in-process OTLP/gRPC collector with
``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` at the ratio), then `shunter bench` runs
closed-loop against the router. Settings alternate over ``--rounds`` so that a machine
getting busier does not favour one of them.

    .venv/bin/python scripts/bench/tracing.py                       # digits, 64 in flight, off vs 1 %
    .venv/bin/python scripts/bench/tracing.py --duration 5 --rounds 1 --ratios 0.01 1

It also runs scripts/bench/tracing_hooks.py: the hooks' CPU per request in-process, a
figure the machine's noise does not swamp.

Target: 1 % sampling costs at most 3 % throughput; off costs nothing (no span objects).
A table goes to stdout and JSON to bench-results/tracing.json. Timing on a busy 2-core
machine is noisy: compare runs made on the same machine, and look at the spread of rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.bench import BenchOptions, run_bench  # noqa: E402
from tests.support.otlp_collector import Collector  # noqa: E402


def start_cluster(repository: Path, run_dir: Path, env: dict[str, str], otlp: str | None) -> tuple[Any, dict]:
    argv = [sys.executable, "-m", "services.cli.main", "up", "--model-repository", str(repository),
            "--workers", "1", "--port", "0", "--run-dir", str(run_dir)]
    if otlp:
        argv += ["--otlp-endpoint", otlp]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    exports: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("export "):
            name, _, value = line[len("export "):].strip().partition("=")
            exports[name] = value
        elif line.startswith("# Ctrl-C"):
            return proc, exports
    raise SystemExit(f"shunter up exited with {proc.wait()} (logs in {run_dir})")


def measure(label: str, ratio: float | None, args: argparse.Namespace, collector: Collector, tmp: Path) -> dict:
    env = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(ratio)} if ratio else {}
    before = len(collector.snapshot())
    proc, exports = start_cluster(args.model_repository.resolve(), tmp / f"run-{label}-{time.monotonic_ns()}", env,
                                  collector.endpoint if ratio else None)
    try:
        result = run_bench(BenchOptions(
            target=exports["SHUNTER_ROUTER"], model=args.model, concurrency=args.concurrency,
            duration_s=args.duration, api_key=exports["SHUNTER_API_KEY"], processes=2, warmup_s=2.0,
        ))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    if set(result["codes"]) != {"OK"}:
        raise SystemExit(f"non-OK responses ({label}): {result['codes']}")
    time.sleep(0.5)
    spans = len(collector.snapshot()) - before
    return {"setting": label, "rps": result["throughput_rps"], "p50": result["latency_ms"]["p50"],
            "p99": result["latency_ms"]["p99"], "requests": result["requests"], "spans": spans}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "examples" / "models")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.01], help="sampling ratios to compare with off")
    args = parser.parse_args()

    collector = Collector()
    tmp = Path(tempfile.mkdtemp(prefix="shunter-bench-tracing-"))
    settings: list[tuple[str, float | None]] = [("off", None), *((f"{r:g}", r) for r in args.ratios)]
    points = []
    try:
        for _ in range(args.rounds):
            for label, ratio in settings:
                points.append(measure(label, ratio, args, collector, tmp))
                print(f"  {points[-1]}", file=sys.stderr)
    finally:
        collector.stop()

    print(f"\ntracing cost on '{args.model}', {args.concurrency} in flight, {args.rounds} round(s) of "
          f"{args.duration:g} s ({os.cpu_count()} CPUs; client, router and worker share them)\n")
    print(f"{'sampling':<10}{'rps (median)':>14}{'rounds':>26}{'vs off':>9}{'p50 ms':>9}{'p99 ms':>9}{'spans':>8}")
    off = statistics.median(p["rps"] for p in points if p["setting"] == "off")
    rows = []
    for label, _ in settings:
        mine = [p for p in points if p["setting"] == label]
        rps = statistics.median(p["rps"] for p in mine)
        row = {"setting": label, "rps": rps, "rounds": [round(p["rps"]) for p in mine], "vs_off": rps / off - 1,
               "p50": statistics.median(p["p50"] for p in mine), "p99": statistics.median(p["p99"] for p in mine),
               "spans": sum(p["spans"] for p in mine), "requests": sum(p["requests"] for p in mine)}
        rows.append(row)
        print(f"{label:<10}{rps:>14.0f}{' '.join(map(str, row['rounds'])):>26}{row['vs_off']:>+9.1%}"
              f"{row['p50']:>9.2f}{row['p99']:>9.2f}{row['spans']:>8}")
    print("\n(target: 1 % sampling within 3 % of off; spans: exported to the collector, warm-up included)")
    hooks = []
    for ratio in args.ratios:
        result = subprocess.run([sys.executable, str(ROOT / "scripts/bench/tracing_hooks.py"), "--ratio", str(ratio)],
                                capture_output=True, text=True, check=True)
        hooks.append(json.loads(result.stdout))
        added = hooks[-1]["added_us"]
        print(f"hooks alone at {ratio:g}: +{added['router']:.1f} µs per request at the router, "
              f"+{added['worker']:.1f} µs at the worker (scripts/bench/tracing_hooks.py)")
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "tracing.json").write_text(json.dumps({"model": args.model, "at": time.time(), "rows": rows,
                                                  "points": points, "hooks": hooks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
