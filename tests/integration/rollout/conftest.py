"""A real cluster for rollout tests: redis-server, two registry replicas, a worker and a
router as processes, with python-handler models whose versions are good, failing or slow.

Every model has version 1 (good, the baseline at 100 %) and version 2, whose behaviour
the model's name says: ``good`` (as good as 1), ``flaky`` (fails about 20 % of
requests), ``slow`` (5× slower or worse: sleeps 25 ms), plus ``quiet`` and ``bluegreen``
(both good, for the low-traffic and blue-green tests), ``bad`` (refused commands),
``restart`` (Redis restarted mid-rollout), ``mirror`` (version 2 ranks the classes
differently: a shadow that always disagrees) and ``held`` (the controller kill test).
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from services.cli.up_cmd import register_repository, scan
from services.common import api_keys
from services.common.rollout_client import RolloutClient
from services.gen.inference import grpc_service_pb2 as pb
from tests.support.processes import RedisServer, ServiceProcess, start_redis, start_service

CONFIG = """
backend: python
max_batch_size: 8
inputs: [{name: IN, datatype: FP32, shape: [4]}]
outputs: [{name: OUT, datatype: FP32, shape: [4]}]
"""
GOOD = """
import numpy as np


def infer(inputs):
    return {"OUT": (inputs["IN"] * 2).astype(np.float32)}
"""
#: Every fifth call (batch) fails, after the first few: the worker's warm-up must pass.
FLAKY = """
import itertools

import numpy as np

CALLS = itertools.count()


def infer(inputs):
    n = next(CALLS)
    if n > 5 and n % 5 == 0:
        raise RuntimeError("injected failure")
    return {"OUT": (inputs["IN"] * 2).astype(np.float32)}
"""
SLOW = """
import time

import numpy as np


def infer(inputs):
    time.sleep(0.025)
    return {"OUT": (inputs["IN"] * 2).astype(np.float32)}
"""
RANKED = """
import numpy as np


def infer(inputs):
    return {"OUT": (inputs["IN"] * np.arange(1, 5)).astype(np.float32)}
"""
MODELS = {"good": GOOD, "flaky": FLAKY, "slow": SLOW, "quiet": GOOD, "bluegreen": GOOD, "bad": GOOD,
          "restart": GOOD, "mirror": RANKED, "held": GOOD}


def write_repository(root: Path) -> Path:
    for name, second in MODELS.items():
        for version, code in (("1", GOOD), ("2", second)):
            (root / name / version).mkdir(parents=True, exist_ok=True)
            (root / name / version / "model.py").write_text(code)
        (root / name / "config.yaml").write_text(textwrap.dedent(CONFIG))
    return root


@dataclass
class RolloutCluster:
    redis: RedisServer
    registries: list[ServiceProcess]
    admin_key: str
    data_key: str
    repository: Path
    worker: ServiceProcess | None = None
    router: ServiceProcess | None = None

    @property
    def registry_addresses(self) -> str:
        return ",".join(r.address for r in self.registries if r.proc.poll() is None)

    async def client(self) -> RolloutClient:
        return RolloutClient(self.registry_addresses, self.admin_key)

    def shunter_env(self) -> dict[str, str]:
        return {"SHUNTER_REGISTRY": self.registry_addresses, "SHUNTER_ADMIN_KEY": self.admin_key}


@dataclass
class Load:
    """Requests sent through the router until stopped: codes and versions that answered."""

    codes: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    #: sticky user -> the versions that served it, in order, repeats collapsed
    users: dict[str, list[str]] = field(default_factory=dict)


async def run_load(address: str, key: str, model: str, stop: asyncio.Event, *, concurrency: int = 4,
                   pause_s: float = 0.0, sticky: Callable[[int], str] | None = None) -> Load:
    """Send requests for ``model`` through the router until ``stop`` is set."""
    load = Load()
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), "<f4").tobytes())
    raw = request.SerializeToString()
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def one_loop(n: int) -> None:
            i = 0
            while not stop.is_set():
                metadata = [("authorization", f"Bearer {key}")]
                user = sticky(n * 100_000 + i) if sticky is not None else None
                if user is not None:
                    metadata.append(("x-user-id", user))
                call = infer(raw, metadata=metadata, timeout=10)
                try:
                    await call
                    load.codes["OK"] += 1
                    for k, v in await call.trailing_metadata() or ():
                        if k == "shunter-model-version":
                            load.versions[v] += 1
                            seen = load.users.setdefault(user, []) if user is not None else None
                            if seen is not None and (not seen or seen[-1] != v):
                                seen.append(v)
                except grpc.aio.AioRpcError as exc:
                    load.codes[exc.code().name] += 1
                    if len(load.failures) < 20:
                        load.failures.append(f"{exc.code().name}: {exc.details()}")
                i += 1
                if pause_s:
                    await asyncio.sleep(pause_s)

        await asyncio.gather(*(one_loop(n) for n in range(concurrency)))
    return load


async def eventually(fn: Callable[[], Awaitable[Any]], predicate: Callable[[Any], bool], *, timeout_s: float,
                     what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await fn()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached after {timeout_s}s; last: {value}")
        await asyncio.sleep(0.2)


@pytest.fixture(scope="package")
def rollout_cluster(tmp_path_factory) -> RolloutCluster:
    tmp = tmp_path_factory.mktemp("rollout-cluster")
    repository = write_repository(tmp / "models")
    redis = start_redis(appendonly=True)  # a restart keeps the data, as in production
    _, admin_key = api_keys.new_key()
    key_file = tmp / "admin.key"
    key_file.write_text(admin_key)
    registries = [
        start_service(["registry", "--redis-url", redis.url, "--admin-key-file", str(key_file), "--port", "0",
                       "--rollout-lease-ttl-s", "2", "--rollout-keep-baseline-s", "2"])
        for _ in range(2)
    ]
    cluster = RolloutCluster(redis, registries, admin_key, "", repository)
    try:
        async def setup() -> str:
            async with await cluster.client() as client:
                await register_repository(client, repository, scan(repository))
                for model in MODELS:
                    await client.set_weights(model, {"1": 100})
                return (await client.create_api_key("data")).secret

        cluster.data_key = asyncio.run(setup())
        env = {"SHUNTER_ADMIN_KEY": admin_key}
        cluster.worker = start_service(
            ["worker", "--registry", cluster.registry_addresses, "--serve", ",".join(MODELS),
             "--trusted-repository", str(repository), "--port", "0", "--lease-ttl-s", "5"], env=env)
        cluster.router = start_service(
            ["router", "--registry", cluster.registry_addresses, "--redis-url", redis.url, "--port", "0"], env=env)

        async def ready() -> None:
            async with await cluster.client() as client:
                wanted = {(m, v) for m in MODELS for v in ("1", "2")}
                await eventually(client.list_workers,
                                 lambda ws: wanted <= {(s.model, s.version) for w in ws for s in w.versions
                                                       if s.ready},
                                 timeout_s=120, what="every version ready")

        asyncio.run(ready())
    except BaseException:
        for service in [cluster.router, cluster.worker, *registries]:
            if service is not None:
                service.kill()
        redis.kill()
        raise
    yield cluster
    for service in [cluster.router, cluster.worker, *registries]:
        if service is not None and service.proc.poll() is None:
            service.terminate(timeout=20)
    redis.kill()
