"""A real cluster for router tests: redis-server, registry, workers and routers as processes.

Safe to import next to tritonclient: nothing here imports the generated ``inference``
protos (the registry client uses only ``shunter.registry.v1``).

The model repository is written on the fly: ``calc`` (pure-python, FP32[4] → FP32[4];
versions 1 and 2 double the input, version 3 triples it, so shadowing 2 agrees and
shadowing 3 disagrees) and ``echo`` (BYTES[1] → INT64[1], each item's length).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import textwrap
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.cli.up_cmd import register_repository, scan
from services.common import api_keys
from services.common.registry_client import RegistryClient
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from tests.support.processes import RedisServer, ServiceProcess, start_redis, start_service

CALC_CONFIG = """
backend: python
max_batch_size: 8
inputs: [{name: IN, datatype: FP32, shape: [4]}]
outputs: [{name: OUT, datatype: FP32, shape: [4]}]
dynamic_batching: {max_queue_delay_us: 500, max_queue_size: 256}
"""
CALC_MODEL = """
import numpy as np


def infer(inputs):
    return {{"OUT": (inputs["IN"] * {factor}).astype(np.float32)}}
"""
ECHO_CONFIG = """
backend: python
max_batch_size: 8
inputs: [{name: TEXT, datatype: BYTES, shape: [1]}]
outputs: [{name: LENGTH, datatype: INT64, shape: [1]}]
"""
ECHO_MODEL = """
import numpy as np


def infer(inputs):
    text = inputs["TEXT"]
    return {"LENGTH": np.array([[len(item) for item in row] for row in text], dtype=np.int64)}
"""


def write_repository(root: Path) -> Path:
    for version, factor in (("1", "2"), ("2", "2.0000001"), ("3", "3")):
        (root / "calc" / version).mkdir(parents=True, exist_ok=True)
        (root / "calc" / version / "model.py").write_text(CALC_MODEL.format(factor=factor))
    (root / "calc" / "config.yaml").write_text(textwrap.dedent(CALC_CONFIG))
    (root / "echo" / "1").mkdir(parents=True, exist_ok=True)
    (root / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    (root / "echo" / "config.yaml").write_text(textwrap.dedent(ECHO_CONFIG))
    return root


def worker_inferences(url: str, **labels: str) -> float:
    """Inference requests a worker has served, over ModelInfer calls and stream messages.

    Routers reach workers over a ModelStreamInfer stream by default (``--worker-link``).
    """
    return sum(
        metric(url, "shunter_requests_total", service="worker", method=method, **labels)
        for method in ("ModelInfer", "ModelStreamInfer")
    )


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample's values over series matching ``labels``."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {timeout}s")
        time.sleep(0.05)


@dataclass
class Cluster:
    redis: RedisServer
    registry: ServiceProcess
    admin_key: str
    repository: Path
    workers: list[ServiceProcess] = field(default_factory=list)
    routers: list[ServiceProcess] = field(default_factory=list)
    #: name → whole API key
    keys: dict[str, str] = field(default_factory=dict)
    key_ids: dict[str, str] = field(default_factory=dict)

    def admin(self, fn: Callable[[RegistryClient], Awaitable[Any]]) -> tuple[Any, int]:
        """Run ``fn(client)`` against the registry; returns its result and the last revision."""

        async def go() -> tuple[Any, int]:
            async with RegistryClient(self.registry.address, self.admin_key) as client:
                result = await fn(client)
                return result, client.last_revision

        # A thread of its own, so this works from sync fixtures and async tests alike.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, go()).result()

    def wait_routers(self, revision: int) -> None:
        """Block until every router holds at least ``revision`` of the routing table."""
        for router in self.routers:
            wait_for(
                lambda r=router: metric(r.metrics_url, "shunter_router_routing_table_revision") >= revision,
                what=f"router {router.address} at revision {revision}",
            )

    def set_policy(self, model: str, weights: dict[str, int], **fields: Any) -> None:
        _, revision = self.admin(lambda c: c.set_weights(model, weights, **fields))
        self.wait_routers(revision)

    def create_key(self, name: str, **kwargs: Any) -> str:
        response, revision = self.admin(lambda c: c.create_api_key(name, **kwargs))
        self.keys[name], self.key_ids[name] = response.secret, response.key.key_id
        self.wait_routers(revision)
        return response.secret

    def ready_worker_addresses(self) -> set[str]:
        """Addresses of the workers the registry lists with every version of the repository ready."""
        wanted = {(m, v) for m, versions in scan(self.repository).items() for v in versions}
        workers, _ = self.admin(lambda c: c.list_workers())
        return {w.address for w in workers if wanted <= {(s.model, s.version) for s in w.versions if s.ready}}

    def ready_workers(self) -> int:
        return len(self.ready_worker_addresses())

    def add_worker(self) -> ServiceProcess:
        worker = start_service(
            ["worker", "--registry", self.registry.address, "--serve", "calc,echo", "--trusted-repository",
             str(self.repository), "--port", "0", "--lease-ttl-s", "5"],
            env={"SHUNTER_ADMIN_KEY": self.admin_key},
        )
        self.workers.append(worker)
        # By address, not by count: a worker killed just before may still hold its lease (and
        # its grace) and leave the count unchanged while the new one joins.
        wait_for(lambda: worker.address in self.ready_worker_addresses(), 120, "worker ready in the registry")
        return worker

    def add_router(self, *extra: str) -> ServiceProcess:
        router = start_service(
            ["router", "--registry", self.registry.address, "--redis-url", self.redis.url, "--port", "0", *extra],
            env={"SHUNTER_ADMIN_KEY": self.admin_key},
        )
        self.routers.append(router)
        return router

    def stop(self) -> None:
        for service in [*self.routers, *self.workers, self.registry]:
            service.terminate(timeout=20)
        self.redis.kill()


def start_cluster(tmp: Path, *, workers: int = 2, routers: int = 2, router_args: tuple[str, ...] = ()) -> Cluster:
    repository = write_repository(tmp / "models")
    redis = start_redis(appendonly=True)
    _, admin_key = api_keys.new_key()
    key_file = tmp / "admin.key"
    key_file.write_text(admin_key)
    registry = start_service(
        ["registry", "--redis-url", redis.url, "--admin-key-file", str(key_file), "--port", "0"]
    )
    cluster = Cluster(redis=redis, registry=registry, admin_key=admin_key, repository=repository)
    try:
        cluster.admin(lambda c: register_repository(c, repository, scan(repository)))
        for _ in range(workers):
            cluster.add_worker()
        for _ in range(routers):
            cluster.add_router(*router_args)
        cluster.create_key("data")
        cluster.create_key("limited", rate=rpb.RateLimit(per_second=50, burst=10))
        cluster.create_key("calc-only", models=["calc"])
        cluster.create_key("fast-limit", rate=rpb.RateLimit(per_second=100_000, burst=1000))
    except BaseException:
        cluster.stop()
        raise
    return cluster
