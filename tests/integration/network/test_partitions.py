"""What a partition costs: a router, two workers, the registry and Redis on separate test
hosts (network namespaces on a bridge), under steady load from the test (root namespace).

Scenarios: one worker's reply path 50 ms slower; one worker cut off, then back; the
registry cut off, then back. Measured: time until the router stops sending to the lost
worker, requests failed meanwhile, and recovery once the link returns; each printed (run
with -s) and asserted with generous bounds only (no tight timing).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from services.cli.up_cmd import register_repository, scan
from services.common import api_keys
from services.common.registry_client import RegistryClient
from tests.integration.router.client import Client, auth, calc_request
from tests.integration.router.cluster import metric, wait_for, write_repository
from tests.support.netns import Host, Network
from tests.support.processes import ServiceProcess, start_service

#: Leases expire after this long without a heartbeat (workers heartbeat every third of it).
LEASE_TTL_S = 5
#: Each request's deadline: a request sent into a partition fails after this.
DEADLINE_S = 2.0


@dataclass
class Outcome:
    sent: float
    done: float
    code: grpc.StatusCode


@dataclass
class Load:
    """Closed-loop calls (a few at a time) through the router, each outcome kept."""

    router: str
    key: str
    callers: int = 4
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)
        return self.outcomes

    async def _run(self) -> None:
        async with Client(self.router) as client:

            async def caller() -> None:
                while not self._stop.is_set():
                    sent = time.monotonic()
                    try:
                        await client.stub.ModelInfer(calc_request(), metadata=auth(self.key), timeout=DEADLINE_S)
                        code = grpc.StatusCode.OK
                    except grpc.aio.AioRpcError as exc:
                        code = exc.code()
                    self.outcomes.append(Outcome(sent, time.monotonic(), code))
                    await asyncio.sleep(0.01)

            await asyncio.gather(*(caller() for _ in range(self.callers)))


@dataclass
class NetCluster:
    net: Network
    hosts: dict[str, Host]
    registry: ServiceProcess
    workers: dict[str, ServiceProcess]
    router: ServiceProcess
    delay_line: subprocess.Popen
    admin_key: str
    data_key: str

    def admin(self, fn):
        async def go():
            async with RegistryClient(self.registry.address, self.admin_key) as client:
                return await fn(client)

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, go()).result()

    def served(self, worker: str) -> float:
        url = self.workers[worker].metrics_url
        return sum(
            metric(url, "shunter_requests_total", service="worker", method=m, code="OK")
            for m in ("ModelInfer", "ModelStreamInfer")
        )

    def router_metric(self, name: str) -> float:
        return metric(self.router.metrics_url, name)

    def workers_in_registry(self) -> set[str]:
        return {w.address for w in self.admin(lambda c: c.list_workers())}


def _start(tmp: Path) -> tuple[Network, NetCluster]:
    net = Network().open()
    try:
        hosts = {name: net.add_host(name) for name in ("redis", "registry", "worker-a", "worker-b", "router")}
        redis_ip = hosts["redis"].ip
        net.run(hosts["redis"], ["redis-server", "--bind", redis_ip, "--port", "6379", "--save", "",
                                 "--appendonly", "no", "--protected-mode", "no", "--dir", str(tmp)],
                stdout=subprocess.DEVNULL)
        repository = write_repository(tmp / "models")
        _, admin_key = api_keys.new_key()
        (tmp / "admin.key").write_text(admin_key)
        key_env = {"SHUNTER_ADMIN_KEY": admin_key}
        registry = start_service(
            ["registry", "--redis-url", f"redis://{redis_ip}:6379/0", "--admin-key-file", str(tmp / "admin.key"),
             "--host", hosts["registry"].ip, "--port", "50051", "--metrics-port", "9090"],
            wrapper=hosts["registry"].wrapper,
        )
        reg = f"{hosts['registry'].ip}:50051"
        workers = {}
        for name in ("worker-a", "worker-b"):
            host = hosts[name]
            # worker-b is reached through a delay line on its port 8002 (no delay until asked).
            advertise = f"{host.ip}:8002" if name == "worker-b" else f"{host.ip}:8001"
            workers[name] = start_service(
                ["worker", "--registry", reg, "--serve", "calc", "--trusted-repository", str(repository),
                 "--host", host.ip, "--port", "8001", "--metrics-port", "9090", "--advertise", advertise,
                 "--lease-ttl-s", str(LEASE_TTL_S)],
                env=key_env, wrapper=host.wrapper,
            )
        delay_line = net.start_delay_line(hosts["worker-b"], 8002, 8001)
        router = start_service(
            ["router", "--registry", reg, "--redis-url", f"redis://{redis_ip}:6379/0",
             "--host", hosts["router"].ip, "--port", "8001", "--metrics-port", "9090"],
            env=key_env, wrapper=hosts["router"].wrapper,
        )
        cluster = NetCluster(net, hosts, registry, workers, router, delay_line, admin_key, "")
        cluster.admin(lambda c: register_repository(c, repository, scan(repository)))
        cluster.admin(lambda c: c.set_weights("calc", {"1": 100}))
        cluster.data_key = cluster.admin(lambda c: c.create_api_key("net")).secret
        wait_for(lambda: len(cluster.workers_in_registry()) == 2, 60, "both workers registered")
        # Until both workers answer through the router, the cluster is not ready.
        before = {w: cluster.served(w) for w in workers}
        load = Load(router.address, cluster.data_key).start()
        try:
            wait_for(lambda: all(cluster.served(w) > before[w] for w in workers), 60, "both workers serving")
        finally:
            load.stop()
        return net, cluster
    except BaseException:
        net.close()
        raise


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    net, started = _start(tmp_path_factory.mktemp("netns"))
    yield started
    services = [started.router, *started.workers.values(), started.registry]
    logs = {s.address: s.logs() for s in services}
    for service in services:
        service.terminate(timeout=20)
    net.close()
    for address, log in logs.items():
        assert "Traceback" not in log, f"{address} logged an unexpected error:\n{log}"


def report(title: str, **figures: object) -> None:
    print(f"\n[{title}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def failures(outcomes: list[Outcome], start: float = 0.0, end: float = float("inf")) -> list[Outcome]:
    return [o for o in outcomes if o.code != grpc.StatusCode.OK and start <= o.sent < end]


def test_a_slower_worker_gets_less_of_the_load_and_nothing_fails(cluster):
    served_before = {w: cluster.served(w) for w in cluster.workers}
    cluster.delay_line.send_signal(signal.SIGUSR1)
    try:
        load = Load(cluster.router.address, cluster.data_key, callers=8).start()
        time.sleep(8)
        outcomes = load.stop()
    finally:
        cluster.delay_line.send_signal(signal.SIGUSR2)
    served = {w: cluster.served(w) - served_before[w] for w in cluster.workers}
    ok = [o for o in outcomes if o.code == grpc.StatusCode.OK]
    report("delay 50 ms on worker-b", requests=len(outcomes), failed=len(outcomes) - len(ok),
           served_a=served["worker-a"], served_b=served["worker-b"])
    assert len(ok) == len(outcomes) > 0
    # Least outstanding requests: the slow worker holds its calls longer, so it is picked less.
    assert served["worker-b"] < served["worker-a"]


def test_a_partitioned_worker_is_dropped_and_comes_back(cluster):
    lost = cluster.hosts["worker-a"]
    lost_address = f"{lost.ip}:8001"
    load = Load(cluster.router.address, cluster.data_key).start()
    time.sleep(2)
    cut_at = time.monotonic()
    cluster.net.cut(lost)
    try:
        wait_for(lambda: lost_address not in cluster.workers_in_registry(), 60, "lease of the lost worker expired")
        dropped_at = time.monotonic()
        time.sleep(DEADLINE_S + 8)  # past the last deadline of anything sent before the drop
    finally:
        cluster.net.restore(lost)
    restored_at = time.monotonic()
    served_before = cluster.served("worker-a")
    wait_for(lambda: cluster.served("worker-a") > served_before, 90, "the restored worker serving again")
    back_at = time.monotonic()
    outcomes = load.stop()
    during = failures(outcomes, cut_at, restored_at)
    last_failed_sent = max((o.sent for o in during), default=cut_at) - cut_at
    report("partition worker-a", lease_dropped_after_s=round(dropped_at - cut_at, 1),
           router_stopped_sending_after_s=round(last_failed_sent, 1), failed=len(during),
           requests=len([o for o in outcomes if cut_at <= o.sent < restored_at]),
           codes=sorted({o.code.name for o in during}), recovered_after_s=round(back_at - restored_at, 1))
    # The router stops sending to the lost worker once its lease expires (or sooner).
    assert last_failed_sent <= (dropped_at - cut_at) + DEADLINE_S + 5
    # After that, and until the link returns, nothing fails.
    assert not failures(outcomes, dropped_at + DEADLINE_S + 1, restored_at)
    assert not failures(outcomes, back_at)


def test_a_partitioned_registry_leaves_routing_as_it_was(cluster):
    registry = cluster.hosts["registry"]
    load = Load(cluster.router.address, cluster.data_key).start()
    time.sleep(2)
    cut_at = time.monotonic()
    cluster.net.cut(registry)
    try:
        time.sleep(20)
    finally:
        cluster.net.restore(registry)
    restored_at = time.monotonic()
    time.sleep(5)
    outcomes = load.stop()
    during = failures(outcomes, cut_at, restored_at)
    report("partition registry", requests=len([o for o in outcomes if cut_at <= o.sent < restored_at]),
           failed=len(during))
    # Routers route on the last table they saw; workers keep serving without their registry.
    assert not during
    wait_for(lambda: cluster.router_metric("shunter_router_registry_connected") == 1, 90, "watch back")
    wait_for(lambda: len(cluster.workers_in_registry()) == 2, 90, "both workers registered again")


def test_the_router_notices_a_lost_registry_within_30_s(cluster):
    registry = cluster.hosts["registry"]
    assert cluster.router_metric("shunter_router_registry_connected") == 1
    cut_at = time.monotonic()
    cluster.net.cut(registry)
    try:
        wait_for(lambda: cluster.router_metric("shunter_router_registry_connected") == 0, 30, "router noticed")
        report("registry lost", noticed_after_s=round(time.monotonic() - cut_at, 1))
    finally:
        cluster.net.restore(registry)
        wait_for(lambda: cluster.router_metric("shunter_router_registry_connected") == 1, 90, "watch back")
