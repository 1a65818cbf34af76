"""`shunter worker --processes N`: one port, N real processes that all serve, one readiness
line, SIGTERM drains them all, and a child that dies takes the group down (non-zero)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from tests.integration.router.cluster import metric
from tests.support.models import build_examples
from tests.support.processes import ROOT, ServiceProcess, start_service

CHILD_LINE = re.compile(r"^# (\w+) process (\d+) pid (\d+) address (\S+) metrics (\S+)$")
#: Separate connections: the kernel spreads connections, not calls, over the processes, so
#: with 24 of them the chance that one process gets none is 2 × 2^-24.
CONNECTIONS = 24


def children(service: ServiceProcess) -> dict[int, str]:
    """pid → metrics URL of each child, from the group's `# worker process ...` lines."""
    found = {}
    for line in service.stdout_lines:
        match = CHILD_LINE.match(line)
        if match:
            found[int(match.group(3))] = f"http://{match.group(5)}/metrics"
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its state in /proc says it has exited.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def wait_gone(pids, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if alive(p)]}"
        time.sleep(0.05)


def digits_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input__0", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.random.default_rng(0).random((1, 64), dtype=np.float32).tobytes())
    return request


def start_group(processes: int = 2) -> ServiceProcess:
    repo = build_examples()
    return start_service(
        ["worker", "--model-repository", str(repo), "--models", "digits", "--processes", str(processes), "--port", "0"]
    )


@pytest.fixture(scope="module")
def group():
    service = start_group()
    yield service
    service.terminate()


async def test_every_process_serves_and_the_group_prints_one_readiness_line(group: ServiceProcess):
    pids = children(group)
    assert len(pids) == 2, group.stdout_lines
    assert sum("listening on" in line for line in group.stdout_lines) == 1
    ready = [line for line in group.stdout_lines if "listening on" in line]
    assert ready[0] == f"shunter worker listening on {group.address} metrics {group.host}:{group.metrics_port}"

    async def one_call() -> pb.ModelInferResponse:
        # A local subchannel pool: a new TCP connection per channel, as separate clients have.
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(group.address, options=options) as channel:
            return await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(digits_request(), timeout=30)

    responses = await asyncio.gather(*(one_call() for _ in range(CONNECTIONS)))
    assert all(r.model_name == "digits" and len(r.raw_output_contents) == 1 for r in responses)
    served = {
        pid: metric(url, "shunter_requests_total", service="worker", method="ModelInfer", code="OK")
        for pid, url in pids.items()
    }
    assert sum(served.values()) == CONNECTIONS, served
    assert all(count > 0 for count in served.values()), f"one process served nothing: {served}"


def test_sigterm_drains_every_process_and_exits_zero():
    service = start_group()
    pids = list(children(service))
    assert service.terminate() == 0, service.logs()
    wait_gone(pids)
    assert service.logs().count("worker: stopped") == 2, service.logs()


def test_ctrl_c_reaches_the_supervisor_which_drains_the_children():
    service = start_group()
    pids = list(children(service))
    # Children run in process groups of their own: a terminal's Ctrl-C (SIGINT to the
    # foreground group) reaches the supervisor alone, as here.
    assert all(os.getpgid(pid) != os.getpgid(service.proc.pid) for pid in pids)
    service.proc.send_signal(signal.SIGINT)
    assert service.proc.wait(timeout=60) == 0, service.logs()
    wait_gone(pids)


def test_children_drain_when_the_supervisor_is_killed():
    service = start_group()
    pids = list(children(service))
    service.proc.kill()
    service.proc.wait(timeout=10)
    wait_gone(pids, timeout=60)  # SIGTERM from the kernel (PR_SET_PDEATHSIG), then the drain


def test_a_child_that_dies_stops_the_group_with_an_error():
    service = start_group()
    pids = list(children(service))
    os.kill(pids[0], signal.SIGKILL)
    code = service.proc.wait(timeout=60)
    assert code != 0
    wait_gone(pids)
    assert "process 0" in service.logs() and "stopping the others" in service.logs(), service.logs()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_a_port_held_by_another_program_is_refused_at_once():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run_cli("worker", "--model-repository", str(build_examples()), "--processes", "2", "--port", str(port))
    assert done.returncode == 1
    assert f"cannot bind 127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--processes", "0"), "--processes must be at least 1"),
        (
            ("--processes", "2", "--registry", "127.0.0.1:1", "--serve", "digits", "--admin-key", "k",
             "--advertise", "10.0.0.1:8001"),
            "with --processes each process advertises its own",
        ),
    ],
)
def test_bad_process_counts_are_refused(args, message):
    done = run_cli("worker", "--model-repository", str(build_examples()), *args)
    assert done.returncode == 2
    assert message in done.stderr
