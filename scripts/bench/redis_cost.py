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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from services.common.ready_line import free_port, parse_ready_line  # noqa: E402
from services.gen.inference import grpc_service_pb2 as pb  # noqa: E402
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

SHUNTER = [sys.executable, "-m", "services.cli.main"]




def shunter(*args: str, env: dict[str, str]) -> str:
    return subprocess.run([*SHUNTER, *args], check=True, capture_output=True, text=True, env=env, cwd=ROOT).stdout


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
    port = free_port()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL))
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        up = subprocess.Popen([*SHUNTER, "up", "--redis-url", url, "--workers", "1", "--port", "0",
                               "--run-dir", str(work)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        procs.append(up)
        env = dict(os.environ)
        for line in up.stdout:
            if line.startswith("export "):
                name, value = line[len("export "):].strip().split("=", 1)
                env[name] = value
            if line.startswith("# Ctrl-C"):
                break
        limited = json.loads(shunter("keys", "create", "--tenant", "limited", "--rate", "100000/s", "--json",
                                     env=env))["secret"]
        router = subprocess.Popen([*SHUNTER, "router", "--registry", env["SHUNTER_REGISTRY"], "--redis-url", url,
                                   "--port", "0", "--near-cache-mb", "0"], stdout=subprocess.PIPE, text=True,
                                  env=env, cwd=ROOT)
        procs.append(router)
        far_router = next(r.address for r in map(parse_ready_line, router.stdout) if r and r.service == "router")
        rng = np.random.default_rng(0)
        distinct = [rng.random((1, 64), dtype=np.float32) for _ in range(args.requests)]
        asyncio.run(send(env["SHUNTER_ROUTER"], env["SHUNTER_API_KEY"], distinct[:200]))  # warm up
        client.config_resetstat()
        time.sleep(10)
        calls, bytes_in, bytes_out = counters(client)
        idle = {"calls": {k: v / 10 for k, v in calls.items()}, "in": bytes_in / 10, "out": bytes_out / 10}
        results = {"idle_commands_per_second": {k: round(v, 2) for k, v in idle["calls"].items()
                                                if not k.startswith(("config", "info"))}}
        results["unlimited key, cache off"] = measure(client, env["SHUNTER_ROUTER"], env["SHUNTER_API_KEY"],
                                                      distinct, idle)
        results["rate-limited key, cache off"] = measure(client, env["SHUNTER_ROUTER"], limited, distinct, idle)
        shunter("traffic", "set", "digits", "3=100", "--cache-ttl", "600", env=env)
        time.sleep(2)  # the routers pick the policy up from the watch
        results["cache on, distinct inputs (misses)"] = measure(client, far_router, env["SHUNTER_API_KEY"],
                                                                 distinct, idle)
        results["cache on, repeated inputs (Redis hits)"] = measure(client, far_router, env["SHUNTER_API_KEY"],
                                                                     distinct, idle)
        # Redis' own MEMORY USAGE per key (key, value, expiry and allocator overhead).
        keys = [k for k in client.scan_iter(count=1000) if client.ttl(k) > 0][:200]
        results["cache entries sampled"] = len(keys)
        results["redis memory per cached entry, bytes"] = round(sum(client.memory_usage(k) for k in keys) / len(keys))
        results["cached response bytes (value)"] = round(sum(client.strlen(k) for k in keys) / len(keys))
        results["cache key bytes"] = round(sum(len(k) for k in keys) / len(keys))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for name, value in results.items():
            print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
