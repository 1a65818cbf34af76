"""Shared parts of the process- and Redis-fault scenarios: a cluster whose registry and Redis
can be killed and brought back on the same ports, a client that retries over two routers,
and the figures every scenario reports (codes, recovery, memory).

Built on tests/reliability/cluster.py (``Small``) and load.py (``Outcomes``); nothing here
changes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.cli.up_cmd import register_repository, scan
from services.common import api_keys
from tests.integration.router.cluster import metric, wait_for
from tests.reliability import load
from tests.reliability.cluster import Small
from tests.support.processes import ServiceProcess, start_redis, start_service

SECONDS = float(os.environ.get("SHUNTER_RELIABILITY_SECONDS", "10"))


@dataclass
class FaultCluster(Small):
    """``Small`` plus what a restart needs: the admin key file and the registry's extra flags."""

    key_file: Path | None = None
    registry_args: tuple[str, ...] = ()

    def kill_registry(self) -> int:
        """SIGKILL the registry; returns its port (a restart binds the same one)."""
        port = self.registry.port
        self.registry.kill()
        return port

    def start_registry(self, port: int = 0) -> ServiceProcess:
        self.registry = start_service(["registry", "--redis-url", self.redis.url, "--admin-key-file",
                                       str(self.key_file), "--port", str(port), *self.registry_args])
        return self.registry


def start_fault_cluster(tmp: Path, repository: Path, *, appendonly: bool = False,
                        registry_args: tuple[str, ...] = ()) -> FaultCluster:
    """Redis (AOF when ``appendonly``), a registry, and ``repository`` registered; no workers yet."""
    redis = start_redis(appendonly=appendonly)
    _, admin_key = api_keys.new_key()
    key_file = tmp / "admin.key"
    key_file.write_text(admin_key)
    cluster = FaultCluster(redis=redis, registry=None, admin_key=admin_key, repository=repository,  # type: ignore[arg-type]
                           key_file=key_file, registry_args=registry_args)
    try:
        cluster.start_registry()
        cluster.admin(lambda c: register_repository(c, repository, scan(repository)))
    except BaseException:
        if cluster.registry is not None:
            cluster.registry.kill()
        redis.kill()
        raise
    return cluster


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def codes_text(run: load.Outcomes, ok: tuple[str, ...] = ("OK",)) -> str:
    """``failed / total: CODE n, ...`` (failed: every code not in ``ok``)."""
    codes = run.by_code()
    failed = sum(n for code, n in codes.items() if code not in ok)
    return f"{failed} / {run.total}: " + ", ".join(f"{c} {n}" for c, n in codes.items())


def failed(run: load.Outcomes, ok: tuple[str, ...] = ("OK",)) -> int:
    return sum(n for code, n in run.by_code().items() if code not in ok)


def recovery_after(run: load.Outcomes, fault_at: float, slow_s: float) -> float:
    """Seconds from ``fault_at`` to the completion of the last call that failed or took over ``slow_s``."""
    late = [done for code, lat, done in zip(run.codes, run.latency_s, run.done_at, strict=True)
            if done >= fault_at and (code != "OK" or lat > slow_s)]
    return max(late) - fault_at if late else 0.0


def rss(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for who, pid in pids.items():
        try:
            out[who] = load.rss_mb(pid)
        except FileNotFoundError:
            out[who] = float("nan")
    return out


def rss_rows(before: dict[str, float], after: dict[str, float]) -> list[tuple[str, str]]:
    return [(f"RSS {who} before / after", f"{before[who]:.0f} / {after.get(who, float('nan')):.0f} MiB")
            for who in before]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def router_metric(router: ServiceProcess, name: str, **labels: str) -> float:
    return metric(router.metrics_url, name, **labels)


def wait_router_connected(router: ServiceProcess, timeout_s: float = 60.0) -> None:
    wait_for(lambda: router_metric(router, "shunter_router_registry_connected") >= 1, timeout_s,
             f"router {router.address} connected to the registry")


async def at(delay_s: float, action) -> float:
    """Run blocking ``action`` (in a thread) ``delay_s`` from now; returns when it ran (monotonic)."""
    await asyncio.sleep(delay_s)
    when = time.monotonic()
    await asyncio.to_thread(action)
    return when


def retrying_service_config() -> str:
    """round_robin over every address of the target, each call retried on UNAVAILABLE.

    A plain gRPC client feature (gRFC A6), so the scenario measures what a user's client
    gets from two routers, not a test harness's own retry loop.
    """
    return json.dumps({
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": [{"service": "inference.GRPCInferenceService"}],
            "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
        }],
    })


async def retrying_closed_loop(addresses: list[str], payload: bytes, concurrency: int, seconds: float, *,
                               metadata, timeout_s: float = 10.0) -> load.Outcomes:
    """load.closed_loop through one channel over ``addresses`` with gRPC's own retries on."""
    outcomes = load.Outcomes()
    target = "ipv4:" + ",".join(addresses)
    options = (("grpc.enable_retries", 1), ("grpc.service_config", retrying_service_config()),
               ("grpc.use_local_subchannel_pool", 1))
    channel = grpc.aio.insecure_channel(target, options=options)
    call = channel.unary_unary(load.MODEL_INFER, request_serializer=None, response_deserializer=None)
    monotonic = time.monotonic

    async def caller() -> None:
        while monotonic() < outcomes.started + seconds:
            sent = monotonic()
            try:
                await call(payload, metadata=metadata, timeout=timeout_s)
                code = "OK"
            except grpc.aio.AioRpcError as err:
                code = err.code().name
            done = monotonic()
            outcomes.add(code, done - sent, done)

    try:
        await channel.channel_ready()
        outcomes.started = monotonic()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        outcomes.ended = monotonic()
    finally:
        await channel.close()
    return outcomes
