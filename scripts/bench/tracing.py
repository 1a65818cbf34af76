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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import servers as srv

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.bench import BenchOptions, run_bench  # noqa: E402
from tests.support.otlp_collector import Collector  # noqa: E402

SAMPLER = "parentbased_traceidratio"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "examples" / "models")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per point")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.01, help="the sampled router's ratio")
    args = parser.parse_args()
    for name in [k for k in os.environ if k.startswith("OTEL_")]:
        del os.environ[name]  # only the tracing settings below apply

    collector = Collector()
    logs, models = Path(tempfile.mkdtemp(prefix="shunter-bench-tracing-")), [args.model]
    otlp = ("--otlp-endpoint", collector.endpoint)
    # Sampling ratio 0: the cluster's services trace nothing of their own; its worker follows its callers.
    cluster = srv.launch_cluster(
        "cluster",
        args.model_repository.resolve(),
        models,
        1,
        logs,
        *otlp,
        env={"OTEL_TRACES_SAMPLER": SAMPLER, "OTEL_TRACES_SAMPLER_ARG": "0"},
    )
    srv.start_ready([cluster])
    info, points = cluster.info, []
    router = srv.shunter("router", "--registry", info["registry"], "--port", "0")
    ready = srv.ready_line("router", grpc_metadata=info["grpc_metadata"])
    admin = {"SHUNTER_ADMIN_KEY": info["admin_key"]}
    sampled = {
        "OTEL_TRACES_SAMPLER": SAMPLER,
        "OTEL_TRACES_SAMPLER_ARG": str(args.ratio),
        "OTEL_SERVICE_NAME": "bench-sampled-router",
    }
    routers = {
        "off": srv.launch("router-off", router, logs, models, ready, env=admin),
        f"{args.ratio:g}": srv.launch("router-sampled", [*router, *otlp], logs, models, ready, env=admin | sampled),
    }
    try:
        srv.start_ready(list(routers.values()))
        for label in srv.abba(list(routers), args.rounds):
            before = len(collector.snapshot())
            options = BenchOptions(
                target=routers[label].address,
                model=args.model,
                concurrency=args.concurrency,
                duration_s=args.duration,
                api_key=info["api_key"],
                processes=2,
                warmup_s=1.0,
            )
            result = run_bench(options)
            if set(result["codes"]) != {"OK"}:
                raise SystemExit(f"non-OK responses from {routers[label].address}: {result['codes']}")
            time.sleep(0.3)
            point = {"setting": label, "rps": result["throughput_rps"], "p50": result["latency_ms"]["p50"]}
            point |= {"p99": result["latency_ms"]["p99"], "requests": result["requests"]}
            points.append(point | {"spans": len(collector.snapshot()) - before})
            print(f"  {points[-1]}", file=sys.stderr)
    finally:
        srv.stop_all([cluster, *routers.values()], 60)
        collector.stop()

    print(
        f"\ntracing cost on '{args.model}', {args.concurrency} in flight, {args.rounds} interleaved round(s) of "
        f"{args.duration:g} s, one cluster ({os.cpu_count()} CPUs; client, routers and worker share them)\n"
    )
    print(f"{'router':<10}{'rps (median)':>14}{'rounds':>30}{'vs off':>9}{'p50 ms':>9}{'p99 ms':>9}{'spans':>8}")
    rows: list[dict[str, Any]] = []
    off_rps = statistics.median(p["rps"] for p in points if p["setting"] == "off")
    for label in routers:
        mine = [p for p in points if p["setting"] == label]
        rps = statistics.median(p["rps"] for p in mine)
        row = {"setting": label, "rps": rps, "rounds": [round(p["rps"]) for p in mine], "vs_off": rps / off_rps - 1}
        row |= {k: statistics.median(p[k] for p in mine) for k in ("p50", "p99")}
        row |= {k: sum(p[k] for p in mine) for k in ("spans", "requests")}
        rows.append(row)
        print(
            f"{label:<10}{rps:>14.0f}{' '.join(map(str, row['rounds'])):>30}{row['vs_off']:>+9.1%}"
            f"{row['p50']:>9.2f}{row['p99']:>9.2f}{row['spans']:>8}"
        )
    print(
        "\n(target: 1 % sampling within 3 % of off; spans: arrived at the collector during that setting's points;"
        "\n the batch span processor exports every 5 s, so some belong to the point before)"
    )
    hooks_py = str(ROOT / "scripts/bench/tracing_hooks.py")
    done = subprocess.run(
        [sys.executable, hooks_py, "--ratio", str(args.ratio)], capture_output=True, text=True, check=True
    )
    hooks = json.loads(done.stdout.splitlines()[-1])
    added = hooks["added_us"]
    print(
        f"hooks alone at {args.ratio:g}: +{added['router']:.1f} µs per request at the router, "
        f"+{added['worker']:.1f} µs at the worker (scripts/bench/tracing_hooks.py)"
    )
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    report = {"model": args.model, "at": time.time(), "rows": rows, "points": points, "hooks": hooks}
    (out / "tracing.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
