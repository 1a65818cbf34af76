"""Server processes the report measures: start, wait until ready, account CPU, stop.

Every server (a Shunter worker, a whole `shunter up` cluster, a Triton or MLServer peer)
runs in its own session with stdout and stderr going to a log file; readiness is read
from that file (the line each server prints) and then confirmed over gRPC with
ServerReady and ModelReady for every model, the same check for every system. Several
servers are launched at once and then waited for, so start-up costs one slow start, not
their sum. CPU time is read from /proc (psutil) for a server's whole process tree, which
is how "CPU per request, all processes together" is measured.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil

from services.common.ready_line import parse_ready_line
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc

logger = logging.getLogger("bench.report")

ROOT = Path(__file__).resolve().parents[2]

#: Reads the log so far; returns what it learnt once the server says it is ready, else None.
ReadyParser = Callable[[str], dict[str, Any] | None]


class ServerError(Exception):
    """A server did not start; the message says why and ends with its log's tail."""


@dataclass
class Server:
    """One running server: its root process, log, address and what its ready line said."""

    name: str
    proc: subprocess.Popen
    log: Path
    models: tuple[str, ...]
    parse_ready: ReadyParser
    address: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    #: ServerMetadata of the server once ready: {"name": ..., "version": ...}.
    metadata: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def processes(self, match: str | None = None) -> list[psutil.Process]:
        """The whole process tree (or the processes whose command line contains ``match``)."""
        try:
            root = psutil.Process(self.proc.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        if match is None:
            return tree
        picked = []
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                if match in " ".join(proc.cmdline()):
                    picked.append(proc)
        return picked

    def cpu_seconds(self, match: str | None = None) -> float:
        total = 0.0
        for proc in self.processes(match):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 40.0) -> None:
        """SIGTERM (the server drains and stops its children), then SIGKILL the session."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s; killing it", self.name, grace_s)
        # Children that outlived their parent (a peer's helper processes) share its session.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)




def launch(
    name: str,
    argv: list[str],
    *,
    log_dir: Path,
    models: Iterable[str],
    parse_ready: ReadyParser,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Server:
    """Start a server process (not yet ready: see wait_ready)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
    return Server(name=name, proc=proc, log=log, models=tuple(models), parse_ready=parse_ready)


def wait_ready(servers: list[Server], timeout_s: float = 300.0) -> dict[str, str]:
    """Wait for every server; returns {name: error} for those that failed (and stops them)."""
    pending = list(servers)
    failed: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        for server in list(pending):
            try:
                text = server.log.read_text(errors="replace")
            except OSError:
                text = ""
            info = server.parse_ready(text)
            if info is not None:
                server.info.update(info)
                server.address = info["address"]
                error = _confirm_ready(server, deadline)
                if error:
                    failed[server.name] = error
                    server.stop()
                pending.remove(server)
            elif not server.alive():
                failed[server.name] = (
                    f"exited with code {server.proc.returncode} before it was ready:\n{server.log_tail()}"
                )
                pending.remove(server)
            elif time.monotonic() > deadline:
                failed[server.name] = f"not ready after {timeout_s:.0f} s:\n{server.log_tail()}"
                server.stop()
                pending.remove(server)
        if pending:
            time.sleep(0.2)
    return failed


def _confirm_ready(server: Server, deadline: float) -> str | None:
    """ServerReady and ModelReady for every model over gRPC, as any client would check."""
    metadata = tuple(server.info.get("grpc_metadata", ()))
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        last = "no answer"
        while time.monotonic() < deadline:
            if not server.alive():
                return f"exited with code {server.proc.returncode}:\n{server.log_tail()}"
            try:
                ready = stub.ServerReady(pb.ServerReadyRequest(), timeout=5, metadata=metadata).ready and all(
                    stub.ModelReady(pb.ModelReadyRequest(name=m), timeout=5, metadata=metadata).ready
                    for m in server.models
                )
                if ready:
                    meta = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=5, metadata=metadata)
                    server.metadata = {"name": meta.name, "version": meta.version}
                    return None
                last = "ServerReady/ModelReady said not ready"
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(0.3)
    return f"did not answer ready over gRPC at {server.address} ({last}):\n{server.log_tail()}"


def stop_all(servers: Iterable[Server]) -> None:
    for server in servers:
        server.stop()


# ---------------------------------------------------------------- Shunter


def shunter_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli.main", *args]


def _worker_ready(text: str) -> dict[str, Any] | None:
    for line in text.splitlines():
        announced = parse_ready_line(line)
        if announced and announced.service == "worker":
            return {"address": announced.address}
    return None


def launch_worker(
    name: str, repository: Path, models: Iterable[str], log_dir: Path, extra: Iterable[str] = ()
) -> Server:
    argv = shunter_argv("worker", "--model-repository", str(repository), "--port", "0", "--metrics-port", "0", *extra)
    return launch(name, argv, log_dir=log_dir, models=models, parse_ready=_worker_ready)


def _cluster_ready(text: str) -> dict[str, Any] | None:
    if "# Ctrl-C" not in text:
        return None
    env: dict[str, str] = {}
    workers: list[str] = []
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].strip().partition("=")
            env[key] = value
        elif re.match(r"^#\s+worker-\d+ ", line):
            workers.append(line.split()[2])
    return {
        "address": env["SHUNTER_ROUTER"],
        "registry": env["SHUNTER_REGISTRY"],
        "admin_key": env["SHUNTER_ADMIN_KEY"],
        "api_key": env["SHUNTER_API_KEY"],
        "workers": workers,
        "grpc_metadata": (("authorization", f"Bearer {env['SHUNTER_API_KEY']}"),),
    }


def launch_cluster(name: str, repository: Path, models: Iterable[str], workers: int, log_dir: Path) -> Server:
    """`shunter up`: Redis, registry, ``workers`` workers and a router, as a user starts it."""
    argv = shunter_argv(
        "up",
        "--model-repository",
        str(repository),
        "--workers",
        str(workers),
        "--port",
        "0",
        "--run-dir",
        str(log_dir / f"{name}-run"),
    )
    return launch(name, argv, log_dir=log_dir, models=models, parse_ready=_cluster_ready)


async def _enable_cache(registry: str, admin_key: str, model: str, ttl_s: int) -> None:
    from services.common.registry_client import RegistryClient

    async with RegistryClient(registry, admin_key) as client:
        policy = await client.get_traffic_policy(model)
        policy.cache_enabled, policy.cache_ttl_s = True, ttl_s
        await client.set_traffic_policy(policy)


def enable_cache(cluster: Server, model: str, ttl_s: int = 3600) -> None:
    """Turn the router's response cache on for ``model`` (routers learn it over their watch)."""
    import asyncio

    asyncio.run(_enable_cache(cluster.info["registry"], cluster.info["admin_key"], model, ttl_s))
    time.sleep(1.5)
