"""A cluster worker's start-up: a refused key is fatal, and nothing is SERVING before it serves.

Real registry and Redis from this package's fixtures; the worker is the real command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.processes import ROOT, free_port


def worker_cmd(registry: str, key: str, port: int = 0) -> list[str]:
    return [sys.executable, "-m", "services.cli.main", "worker", "--registry", registry, "--serve", "calc",
            "--admin-key", key, "--port", str(port), "--metrics-port", "0"]


def test_a_key_the_registry_refuses_is_fatal_with_exit_2(registry):
    done = subprocess.run(worker_cmd(registry.address, "shk_0_not-a-key"), cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "refuses this worker's key" in done.stderr and "--admin-key" in done.stderr
    assert "listening on" not in done.stdout


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_worker_whose_registry_is_down_is_not_serving_and_stops_on_sigterm(admin):
    port = free_port()
    proc = subprocess.Popen(worker_cmd(f"127.0.0.1:{free_port()}", admin.key, port), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        status = None
        while status is None:
            assert proc.poll() is None, proc.stderr.read()
            try:
                status = health(f"127.0.0.1:{port}")
            except grpc.RpcError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)  # prompt: not after the registry client's retries
        assert proc.returncode == 0, err
        assert "listening on" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
