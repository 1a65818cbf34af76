"""A worker that stops without closing its connection (SIGSTOP): the stream link's liveness
ping finds it, its pending requests fail UNAVAILABLE (not DEADLINE_EXCEEDED) and are retried
on another worker, and it is ejected; a worker that is merely slow is never taken for hung."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.gen.inference import grpc_service_pb2 as pb
from services.router.balancer import Balancer
from services.router.worker_client import Forward, Liveness, UpstreamError, WorkerTransport, forward_infer
from tests.support.models import write_python_model
from tests.support.processes import start_service

#: Short, so the tests are quick; the defaults are 1 s and 2 s.
LIVENESS = Liveness(interval_s=0.3, timeout_s=0.6)
#: Each call of the "held" model takes longer than a ping interval plus its timeout.
HELD_S = 1.5
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def liveness_failures() -> float:
    return REGISTRY.get_sample_value("shunter_router_liveness_failures_total") or 0.0


def raw_request(name: str, value: float = 1.0) -> bytes:
    req = pb.ModelInferRequest(model_name=name, id=f"r{value}")
    req.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.full(4, value, np.float32).tobytes())
    return req.SerializeToString()


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    repo = tmp_path_factory.mktemp("hung-models")
    write_python_model(repo, "quick", delay_s=0.0, max_batch_size=1, max_queue_size=100)
    write_python_model(repo, "held", delay_s=HELD_S, max_batch_size=1, max_queue_size=100)
    return repo


@pytest.fixture()
def workers(repository):
    started = [start_service(["worker", "--model-repository", str(repository), "--port", "0"]) for _ in range(2)]
    yield started
    for worker in started:
        os.kill(worker.proc.pid, signal.SIGCONT)
        worker.terminate(timeout=20)


async def test_a_slow_worker_is_not_taken_for_hung(workers):
    transport = WorkerTransport(workers[0].address, 1 << 20, "stream", LIVENESS)
    try:
        answer = await transport.infer(Forward(raw_request("held"), 0, caller_id="r1.0"), 30.0)
        response = pb.ModelInferResponse.FromString(answer)
        assert response.model_name == "held" and response.id == "r1.0"
        traced = Forward(raw_request("held", 2.0), 0, trace=(("traceparent", TRACEPARENT),))
        response = pb.ModelInferResponse.FromString(await transport.infer(traced, 30.0))  # unary, watched
        assert response.model_name == "held"
    finally:
        await transport.close()


async def test_a_stopped_workers_pending_requests_fail_unavailable_and_are_retried_elsewhere(workers):
    stopped, live = workers
    balancer = Balancer(
        lambda address: WorkerTransport(address, 1 << 20, "stream", LIVENESS), eject_after=3, cooloff_s=30.0
    )
    addresses = [stopped.address, live.address]
    try:
        # Both links open and answering first.
        for address in addresses:
            await balancer.replica(address).transport.infer(Forward(raw_request("quick"), 0), 10.0)
        os.kill(stopped.proc.pid, signal.SIGSTOP)
        # Pending on the stopped worker: fails UNAVAILABLE, marked hung, well before its deadline.
        started = time.monotonic()
        with pytest.raises(UpstreamError) as info:
            await balancer.replica(stopped.address).transport.infer(Forward(raw_request("quick", 2.0), 0), 30.0)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.hung, info.value.message
        assert time.monotonic() - started < 30.0  # not the deadline
        # Right after, a request to the same worker fails at once instead of opening a new
        # stream and waiting out another ping (the balancer ejects the worker meanwhile).
        pings_missed = liveness_failures()
        with pytest.raises(UpstreamError) as info:
            await balancer.replica(stopped.address).transport.infer(Forward(raw_request("quick"), 0), 30.0)
        assert info.value.hung
        assert liveness_failures() == pings_missed  # refused without a new stream and ping
        await asyncio.sleep(LIVENESS.timeout_s)
        # A request with trace context goes unary, and the stream's pings watch it too.
        traced = Forward(raw_request("quick", 2.5), 0, trace=(("traceparent", TRACEPARENT),))
        with pytest.raises(UpstreamError) as info:
            await balancer.replica(stopped.address).transport.infer(traced, 30.0)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.hung, info.value.message
        # Through forward_infer: the stopped worker is picked first (the live one looks busy),
        # its request is retried on the live one, and the stopped one is ejected.
        balancer.replica(live.address).outstanding = 1000
        balancer.replica(stopped.address).ejected_until = 0.0
        response = await forward_infer(
            balancer, addresses, Forward(raw_request("quick", 3.0), time.monotonic() + 30, caller_id="r3.0")
        )
        assert pb.ModelInferResponse.FromString(response).id == "r3.0"
        balancer.replica(live.address).outstanding = 0
        assert balancer.healthy(addresses) == [live.address]
    finally:
        os.kill(stopped.proc.pid, signal.SIGCONT)
        await asyncio.gather(*(r.transport.close() for r in balancer.retain(())), return_exceptions=True)
