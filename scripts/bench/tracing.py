#!/usr/bin/env python
"""Tracing cost (issue 13 §2): throughput through a router with tracing off against sampled.

One cluster (`shunter up`, one worker, the example models) exporting to an in-process
OTLP/gRPC collector, with ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` at 0: its
services trace nothing of their own and the worker follows its callers. Two more routers
join it on the same worker: one with tracing off, one sampling at the ratio. `shunter bench`
(closed loop) runs against each in turn, ``--rounds`` times interleaved, so both see the
same worker and the same machine. The worker's hooks run for both (the "off" router's
requests carry no context, and the worker samples no root of its own), so the figure is
the router's tracing plus the worker's share for sampled requests.

    .venv/bin/python scripts/bench/tracing.py                       # digits, 64 in flight, off vs 1 %
    .venv/bin/python scripts/bench/tracing.py --duration 5 --rounds 3 --ratio 0.01

It also runs scripts/bench/tracing_hooks.py: the hooks' CPU per request in-process, a
figure the machine's noise does not swamp. Target: 1 % sampling costs at most 3 %
throughput; off costs nothing (no span objects). A table goes to stdout and JSON to
bench-results/tracing.json. Timing on a busy 2-core machine is noisy: look at the rounds.
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
from services.common.ready_line import parse_ready_line  # noqa: E402
from tests.support.otlp_collector import Collector  # noqa: E402

NO_ROOTS = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}


def start_cluster(repository: Path, run_dir: Path, otlp: str) -> tuple[subprocess.Popen, dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--model-repository", str(repository), "--workers", "1",
         "--port", "0", "--run-dir", str(run_dir), "--otlp-endpoint", otlp],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **NO_ROOTS},
    )
    exports: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("export "):
            name, _, value = line[len("export "):].strip().partition("=")
            exports[name] = value
        elif line.startswith("# Ctrl-C"):
            return proc, exports
    raise SystemExit(f"shunter up exited with {proc.wait()} (logs in {run_dir})")


def start_router(exports: dict[str, str], env: dict[str, str], otlp: str | None) -> tuple[subprocess.Popen, str]:
    argv = [sys.executable, "-m", "services.cli.main", "router", "--registry", exports["SHUNTER_REGISTRY"],
            "--port", "0"]
    if otlp:
        argv += ["--otlp-endpoint", otlp]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**clean, "PYTHONUNBUFFERED": "1", "SHUNTER_ADMIN_KEY": exports["SHUNTER_ADMIN_KEY"],
                                 **env})
    assert proc.stdout is not None
    for line in proc.stdout:
        ready = parse_ready_line(line)
        if ready is not None:
            return proc, ready.address
    raise SystemExit(f"router exited with {proc.wait()}")


def measure(target: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    result = run_bench(BenchOptions(target=target, model=args.model, concurrency=args.concurrency,
                                    duration_s=args.duration, api_key=key, processes=2, warmup_s=1.0))
    if set(result["codes"]) != {"OK"}:
        raise SystemExit(f"non-OK responses from {target}: {result['codes']}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "examples" / "models")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per point")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.01, help="the sampled router's ratio")
    args = parser.parse_args()

    collector = Collector()
    tmp = Path(tempfile.mkdtemp(prefix="shunter-bench-tracing-"))
    up, exports = start_cluster(args.model_repository.resolve(), tmp / "run", collector.endpoint)
    routers: list[subprocess.Popen] = []
    points: list[dict[str, Any]] = []
    try:
        off, off_address = start_router(exports, {}, None)
        sampled, sampled_address = start_router(
            exports, {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(args.ratio),
                      "OTEL_SERVICE_NAME": "bench-sampled-router"}, collector.endpoint)
        routers += [off, sampled]
        key = exports["SHUNTER_API_KEY"]
        pair = [("off", off_address), (f"{args.ratio:g}", sampled_address)]
        for round_index in range(args.rounds):
            # ABBA: each setting goes first in every other round, so a drifting machine favours neither.
            for label, address in pair if round_index % 2 == 0 else pair[::-1]:
                before = len(collector.snapshot())
                result = measure(address, key, args)
                time.sleep(0.3)
                points.append({"setting": label, "rps": result["throughput_rps"], "p50": result["latency_ms"]["p50"],
                               "p99": result["latency_ms"]["p99"], "requests": result["requests"],
                               "spans": len(collector.snapshot()) - before})
                print(f"  {points[-1]}", file=sys.stderr)
    finally:
        for proc in [*routers, up]:
            proc.send_signal(signal.SIGTERM)
        for proc in [*routers, up]:
            proc.wait(60)
        collector.stop()

    print(f"\ntracing cost on '{args.model}', {args.concurrency} in flight, {args.rounds} interleaved round(s) of "
          f"{args.duration:g} s, one cluster ({os.cpu_count()} CPUs; client, routers and worker share them)\n")
    print(f"{'router':<10}{'rps (median)':>14}{'rounds':>30}{'vs off':>9}{'p50 ms':>9}{'p99 ms':>9}{'spans':>8}")
    rows = []
    off_rps = statistics.median(p["rps"] for p in points if p["setting"] == "off")
    for label in ("off", f"{args.ratio:g}"):
        mine = [p for p in points if p["setting"] == label]
        rps = statistics.median(p["rps"] for p in mine)
        row = {"setting": label, "rps": rps, "rounds": [round(p["rps"]) for p in mine], "vs_off": rps / off_rps - 1,
               "p50": statistics.median(p["p50"] for p in mine), "p99": statistics.median(p["p99"] for p in mine),
               "spans": sum(p["spans"] for p in mine), "requests": sum(p["requests"] for p in mine)}
        rows.append(row)
        print(f"{label:<10}{rps:>14.0f}{' '.join(map(str, row['rounds'])):>30}{row['vs_off']:>+9.1%}"
              f"{row['p50']:>9.2f}{row['p99']:>9.2f}{row['spans']:>8}")
    print("\n(target: 1 % sampling within 3 % of off; spans: arrived at the collector during that setting's points;"
          "\n the batch span processor exports every 5 s, so some belong to the point before)")
    result = subprocess.run([sys.executable, str(ROOT / "scripts/bench/tracing_hooks.py"), "--ratio", str(args.ratio)],
                            capture_output=True, text=True, check=True)
    hooks = json.loads(result.stdout.splitlines()[-1])
    added = hooks["added_us"]
    print(f"hooks alone at {args.ratio:g}: +{added['router']:.1f} µs per request at the router, "
          f"+{added['worker']:.1f} µs at the worker (scripts/bench/tracing_hooks.py)")
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "tracing.json").write_text(json.dumps({"model": args.model, "at": time.time(), "rows": rows,
                                                  "points": points, "hooks": hooks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
