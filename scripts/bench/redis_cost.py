#!/usr/bin/env python3
"""Redis commands and bytes per request through a router, and Redis memory per cached entry.

For the capacity plan (docs/operations.md): starts a private redis-server and a `shunter up`
cluster on it (1 worker, examples/models), plus a second router with no near cache so that
cache hits reach Redis, then sends single-row digits requests in four scenarios and reads
Redis' own counters (INFO commandstats and stats, reset before each scenario; the idle
background of leases and heartbeats, measured first, is subtracted):

  unlimited key, cache off       what every request costs without limits or cache
  rate-limited key, cache off    + the rate limiter's script
  cache on, distinct inputs      every request a miss: GET + SET
  cache on, repeated inputs      every request a Redis hit (near cache off)

  .venv/bin/python scripts/bench/redis_cost.py [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import redis
import servers as srv

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from services.gen.inference import grpc_service_pb2 as pb  # noqa: E402
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from tests.support.processes import start_redis  # noqa: E402


def shunter(*args: str, env: dict[str, str]) -> str:
    return subprocess.run(srv.shunter(*args), check=True, capture_output=True, text=True, env=env, cwd=ROOT).stdout


def counters(client: redis.Redis) -> tuple[dict[str, int], int, int]:
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    net = client.info("stats")
    return calls, int(net["total_net_input_bytes"]), int(net["total_net_output_bytes"])


async def send(target: str, key: str, inputs: list[np.ndarray], concurrency: int = 16) -> int:
    failures = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        gate = asyncio.Semaphore(concurrency)

        async def one(x: np.ndarray) -> None:
            nonlocal failures
            request = pb.ModelInferRequest(model_name="digits", raw_input_contents=[x.tobytes()])
            request.inputs.add(name="input__0", datatype="FP32", shape=[1, 64])
            async with gate:
                try:
                    await stub.ModelInfer(request, metadata=[("authorization", f"Bearer {key}")], timeout=10)
                except grpc.aio.AioRpcError:
                    failures += 1

        await asyncio.gather(*(one(x) for x in inputs))
    return failures


def measure(client: redis.Redis, target: str, key: str, inputs: list[np.ndarray], idle: dict) -> dict:
    client.config_resetstat()
    start = time.monotonic()
    failures = asyncio.run(send(target, key, inputs))
    took = time.monotonic() - start
    calls, bytes_in, bytes_out = counters(client)
    n = len(inputs)
    ops = {
        name: (count - idle["calls"].get(name, 0) * took) / n
        for name, count in calls.items()
        if not name.startswith(("config", "info")) and count - idle["calls"].get(name, 0) * took > 0.01 * n
    }
    return {
        "requests": n,
        "failures": failures,
        "commands_per_request": {k: round(v, 3) for k, v in sorted(ops.items())},
        "total_commands_per_request": round(sum(ops.values()), 3),
        "bytes_to_redis_per_request": round((bytes_in - idle["in"] * took) / n, 1),
        "bytes_from_redis_per_request": round((bytes_out - idle["out"] * took) / n, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per scenario (default 2000)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shunter-redis-cost-"))
    server = start_redis()
    client, url = redis.Redis.from_url(server.url), server.url
    models = ["digits"]
    cluster = srv.launch_cluster("cluster", ROOT / "examples" / "models", models, 1, work, "--redis-url", url)
    procs = [cluster]
    try:
        srv.start_ready([cluster])
        env = {**os.environ, **cluster.info["exports"]}
        router, key = env["SHUNTER_ROUTER"], env["SHUNTER_API_KEY"]
        limited = shunter("keys", "create", "--tenant", "limited", "--rate", "100000/s", "--json", env=env)
        limited = json.loads(limited)["secret"]
        argv = srv.shunter("router", "--registry", env["SHUNTER_REGISTRY"], "--redis-url", url, "--port", "0")
        ready = srv.ready_line("router", grpc_metadata=cluster.info["grpc_metadata"])
        procs.append(srv.launch("router-far", [*argv, "--near-cache-mb", "0"], work, models, ready, env=env))
        srv.start_ready(procs[1:])
        far_router = procs[1].address
        rng = np.random.default_rng(0)
        distinct = [rng.random((1, 64), dtype=np.float32) for _ in range(args.requests)]
        asyncio.run(send(router, key, distinct[:200]))  # warm up
        client.config_resetstat()
        time.sleep(10)
        calls, bytes_in, bytes_out = counters(client)
        idle = {"calls": {k: v / 10 for k, v in calls.items()}, "in": bytes_in / 10, "out": bytes_out / 10}
        results = {
            "idle_commands_per_second": {
                k: round(v, 2) for k, v in idle["calls"].items() if not k.startswith(("config", "info"))
            }
        }
        results["unlimited key, cache off"] = measure(client, router, key, distinct, idle)
        results["rate-limited key, cache off"] = measure(client, router, limited, distinct, idle)
        shunter("traffic", "set", "digits", "3=100", "--cache-ttl", "600", env=env)
        time.sleep(2)  # the routers pick the policy up from the watch
        for scenario in ("cache on, distinct inputs (misses)", "cache on, repeated inputs (Redis hits)"):
            results[scenario] = measure(client, far_router, key, distinct, idle)
        # Redis' own MEMORY USAGE per key (key, value, expiry and allocator overhead).
        keys = list(client.scan_iter(match="shunter:cache:*", count=1000))[:200]  # services/router/cache.py
        results["cache entries sampled"] = len(keys)
        results["redis memory per cached entry, bytes"] = round(sum(client.memory_usage(k) for k in keys) / len(keys))
        results["cached response bytes (value)"] = round(sum(client.strlen(k) for k in keys) / len(keys))
        results["cache key bytes"] = round(sum(len(k) for k in keys) / len(keys))
    finally:
        srv.stop_all(procs, 30)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for name, value in results.items():
            print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
