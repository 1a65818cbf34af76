#!/usr/bin/env python
"""Cross-check the worker-vs-Triton figure with NVIDIA's own load generator, perf_analyzer.

The report drives every system with `shunter bench`, a Python asyncio client on the
same cores as the server. Both share 2 CPUs, so the client's cost per request shapes
every ratio. This script runs perf_analyzer, the C++ client that ships in the
tritonclient wheel, against the Shunter worker and against Triton with 1 and 2 instances.
It uses the report's servers and files, digits at 64 in flight, and interleaved rounds.
It prints a table, and writes bench-results/perf_analyzer_check.json.

    scripts/bench/report --sections peers --quick   # once: installs Triton's venv
    .venv/bin/python scripts/bench/perf_analyzer_check.py [--rounds 3] [--lib-dir DIR]

perf_analyzer links libb64 and libcudart. libcudart comes from PyPI
(nvidia-cuda-runtime-cu12, installed into .bench-venvs/perf-analyzer). libb64 comes from
the system (Debian/Ubuntu: `apt install libb64-0d`), or from `--lib-dir`, a directory
that holds libb64.so.0d.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_peers import PEERS, Peer, install, launch_triton, model_specs, venv_python
from report_phases import SERVED, bench_repository
from report_servers import ROOT, Server, launch_worker, stop_all, wait_ready

PERF_ANALYZER = ROOT / ".venv" / "bin" / "perf_analyzer"
CUDA_RUNTIME = Peer(
    name="perf-analyzer",
    packages=("nvidia-cuda-runtime-cu12==12.9.79",),
    check="import nvidia.cuda_runtime",
    versions=("nvidia-cuda-runtime-cu12",),
)


def library_path(extra: list[str]) -> str:
    """LD_LIBRARY_PATH for perf_analyzer: libcudart from the pip wheel, then ``extra``."""
    found = subprocess.run(
        [str(venv_python(CUDA_RUNTIME)), "-c", "import nvidia.cuda_runtime as m; print(m.__path__[0])"],
        capture_output=True, text=True, check=True,
    )
    return ":".join([str(Path(found.stdout.strip()) / "lib"), *extra])


def missing_libraries(env: dict[str, str]) -> list[str]:
    done = subprocess.run(["ldd", str(PERF_ANALYZER)], capture_output=True, text=True, env=env, check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if "not found" in line]


def measure(server: Server, model: str, version: str, env: dict[str, str], interval_ms: int) -> dict[str, Any]:
    """One perf_analyzer run at 64 in flight: throughput and latency percentiles."""
    argv = [
        str(PERF_ANALYZER), "-m", model, "-u", server.address, "-i", "grpc",
        "--concurrency-range", "64", "--measurement-interval", str(interval_ms),
        # Its default (3 windows within 10 %) fails outright on 2 shared cores; the rounds'
        # spread is reported instead.
        "--stability-percentage", "50",
    ]
    if version:
        argv += ["-x", version]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", done.stdout)
    if done.returncode != 0 or throughput is None:
        raise RuntimeError(f"perf_analyzer against {server.name} failed:\n{(done.stdout + done.stderr)[-1500:]}")
    latency = {p: int(v) / 1000 for p, v in re.findall(r"(p50|p90|p95|p99) latency: (\d+) usec", done.stdout)}
    return {"throughput_rps": float(throughput.group(1)), **{f"{p}_ms": v for p, v in latency.items()}}


def _spread(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):,.{digits}f} [{min(values):,.{digits}f}–{max(values):,.{digits}f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--interval-ms", type=int, default=4000, help="perf_analyzer measurement window")
    parser.add_argument("--lib-dir", action="append", default=[], help="a directory holding libb64.so.0d")
    args = parser.parse_args()

    logs = ROOT / "bench-results" / "report-logs"
    for peer in (PEERS["triton"], CUDA_RUNTIME):
        problem = install(peer, logs)
        if problem:
            raise SystemExit(f"{peer.name}: {problem}")
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": library_path(args.lib_dir)}
    missing = missing_libraries(env)
    if missing:
        raise SystemExit(
            f"perf_analyzer cannot load {', '.join(missing)}: install libb64 (Debian/Ubuntu: apt install "
            "libb64-0d) or pass --lib-dir with the directory that holds it"
        )

    work = Path(tempfile.mkdtemp(prefix="shunter-perf-analyzer-"))
    source = ROOT / "examples" / "models"
    repository = bench_repository(source, work / "repo", batching=True)
    specs = model_specs(source, SERVED)
    # Triton's models carry no version of their own: perf_analyzer asks for its default.
    systems = [
        ("Shunter worker", launch_worker("shunter-worker", repository, SERVED, logs), SERVED["digits"]),
        ("Triton, 1 instance", launch_triton("triton-1", specs, 1, work, logs), ""),
        ("Triton, 2 instances", launch_triton("triton-2", specs, 2, work, logs), ""),
    ]
    servers = [server for _, server, _ in systems]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in systems}
    try:
        failed = wait_ready(servers, timeout_s=600)
        if failed:
            raise SystemExit(f"did not start: {failed}")
        for round_number in range(1, args.rounds + 1):
            for label, server, version in systems:
                result = measure(server, "digits", version, env, args.interval_ms)
                runs[label].append(result)
                print(f"  round {round_number} {label}: {result['throughput_rps']:,.0f} req/s, "
                      f"p99 {result.get('p99_ms', float('nan')):.1f} ms", flush=True)
    finally:
        stop_all(servers)

    triton_best = max(
        statistics.median(r["throughput_rps"] for r in runs[label]) for label in runs if label.startswith("Triton")
    )
    print("\nperf_analyzer, digits, 1-row requests, 64 in flight (median [min–max] of the rounds)\n")
    print("| system | req/s | p50 ms | p99 ms | vs Triton's best |")
    print("| --- | --- | --- | --- | --- |")
    for label, results in runs.items():
        rps = [r["throughput_rps"] for r in results]
        print(f"| {label} | {_spread(rps, 0)} | {_spread([r['p50_ms'] for r in results], 1)} | "
              f"{_spread([r['p99_ms'] for r in results], 1)} | {statistics.median(rps) / triton_best:.2f}× |")
    out = ROOT / "bench-results" / "perf_analyzer_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": args.rounds, "interval_ms": args.interval_ms, "runs": runs}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
