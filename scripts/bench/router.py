#!/usr/bin/env python
"""Router benchmark (issue 4, "Speed"): the router hop against calling the worker directly.

Brings up a one-worker cluster with `shunter up` (Redis, registry, worker, router) on a
model repository, then runs `shunter bench` (closed loop) against the worker and against
the router with a data key, at concurrency 1 and 32, and reports the latency the hop
adds (p50 and p99 differences). Then it turns the router's response cache on for the
model and measures cache hits (the same request every call, so all but the first hit).

    .venv/bin/python scripts/bench/router.py                   # tiny python model, ~1 min
    .venv/bin/python scripts/bench/router.py --model-repository examples/models --model digits
    .venv/bin/python scripts/bench/router.py --baseline    # also a bare grpc.aio byte proxy

Targets: ≤ 0.3 ms p50 and ≤ 1 ms p99 added; cache hit ≤ 0.5 ms p50. A table goes to
stdout and JSON to bench-results/router.json. Timing on a busy 2-core machine is noisy:
compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.bench import BenchOptions, run_bench  # noqa: E402

IDENTITY_CONFIG = """
backend: python
max_batch_size: 8
inputs: [{name: IN, datatype: FP32, shape: [16]}]
outputs: [{name: OUT, datatype: FP32, shape: [16]}]
"""
IDENTITY_MODEL = """
def infer(inputs):
    return {"OUT": inputs["IN"]}
"""


def identity_repository(root: Path) -> Path:
    """A model whose compute is negligible, so the numbers are about transport and routing."""
    (root / "identity" / "1").mkdir(parents=True)
    (root / "identity" / "config.yaml").write_text(textwrap.dedent(IDENTITY_CONFIG))
    (root / "identity" / "1" / "model.py").write_text(textwrap.dedent(IDENTITY_MODEL))
    return root


def start_cluster(repository: Path, run_dir: Path) -> tuple[subprocess.Popen, dict[str, str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--model-repository", str(repository),
         "--workers", "1", "--port", "0", "--run-dir", str(run_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    env: dict[str, str] = {}
    worker = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("export "):
            name, _, value = line[len("export "):].strip().partition("=")
            env[name] = value
        elif line.startswith("#   worker-1 "):
            worker = line.split()[2]
        elif line.startswith("# Ctrl-C"):
            return proc, env, worker
    raise SystemExit(f"shunter up exited with {proc.wait()} (logs in {run_dir})")


async def enable_cache(registry: str, admin_key: str, model: str) -> None:
    from services.common.registry_client import RegistryClient

    async with RegistryClient(registry, admin_key) as client:
        policy = await client.get_traffic_policy(model)
        policy.cache_enabled, policy.cache_ttl_s = True, 600
        await client.set_traffic_policy(policy)
    await asyncio.sleep(1.0)  # the routers get the new table over their watch stream


def measure(target: str, model: str, concurrency: int, duration: float, api_key: str | None) -> dict[str, Any]:
    options = BenchOptions(
        target=target, model=model, concurrency=concurrency, duration_s=duration, api_key=api_key,
        processes=1 if concurrency == 1 else 2, warmup_s=1.0,
    )
    result = run_bench(options)
    codes = result["codes"]
    if set(codes) != {"OK"}:
        raise SystemExit(f"non-OK responses from {target}: {codes}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, help="default: a generated identity model")
    parser.add_argument("--model", default="identity")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--baseline", action="store_true",
                        help="also measure a bare byte-forwarding grpc.aio proxy (the floor of any Python hop)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="shunter-bench-router-"))
    repository = args.model_repository.resolve() if args.model_repository else identity_repository(tmp / "models")
    proc, env, worker = start_cluster(repository, tmp / "run")
    rows: list[dict[str, Any]] = []
    proxy = None
    try:
        router, key = env["SHUNTER_ROUTER"], env["SHUNTER_API_KEY"]
        targets = [("router vs worker", router, key)]
        if args.baseline:
            # Cluster workers serve routers and admins only: the proxy presents the admin key.
            proxy = subprocess.Popen([sys.executable, str(ROOT / "scripts/bench/passthrough_proxy.py"), worker],
                                     stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "SHUNTER_PROXY_KEY": env["SHUNTER_ADMIN_KEY"]})
            assert proxy.stdout is not None
            targets.append(("bare proxy", f"127.0.0.1:{proxy.stdout.readline().strip()}", None))
        for concurrency in args.concurrency:
            for what, target, api_key in targets:
                direct = measure(worker, args.model, concurrency, args.duration, env["SHUNTER_ADMIN_KEY"])
                routed = measure(target, args.model, concurrency, args.duration, api_key)
                rows.append({"what": what, "concurrency": concurrency,
                             "direct": direct["latency_ms"], "router": routed["latency_ms"],
                             "direct_rps": direct["throughput_rps"], "router_rps": routed["throughput_rps"]})
        asyncio.run(enable_cache(env["SHUNTER_REGISTRY"], env["SHUNTER_ADMIN_KEY"], args.model))
        cached = measure(router, args.model, 1, args.duration, key)
        rows.append({"what": "cache hit", "concurrency": 1, "router": cached["latency_ms"],
                     "router_rps": cached["throughput_rps"]})
    finally:
        if proxy is not None:
            proxy.kill()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

    print(f"\nrouter hop on model '{args.model}' ({os.cpu_count()} CPUs; client, router and worker share them)\n")
    print(f"{'measure':<18}{'conc':>5}{'direct p50':>12}{'router p50':>12}{'added p50':>11}"
          f"{'direct p99':>12}{'router p99':>12}{'added p99':>11}{'router rps':>12}")
    for row in rows:
        r = row["router"]
        if "direct" in row:
            d = row["direct"]
            print(f"{row['what']:<18}{row['concurrency']:>5}{d['p50']:>12.3f}{r['p50']:>12.3f}"
                  f"{r['p50'] - d['p50']:>+11.3f}{d['p99']:>12.3f}{r['p99']:>12.3f}{r['p99'] - d['p99']:>+11.3f}"
                  f"{row['router_rps']:>12.0f}")
        else:
            print(f"{row['what']:<18}{row['concurrency']:>5}{'':>12}{r['p50']:>12.3f}{'':>11}{'':>12}"
                  f"{r['p99']:>12.3f}{'':>11}{row['router_rps']:>12.0f}")
    print("\n(milliseconds; targets: added p50 <= 0.3, added p99 <= 1.0, cache hit p50 <= 0.5)")
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "router.json").write_text(json.dumps({"model": args.model, "at": time.time(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
