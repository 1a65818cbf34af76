"""Admission on a real worker process: bounds refuse at once with UNAVAILABLE ("overloaded:"),
a deadline shorter than the expected wait is refused instead of queued, and a router's
liveness ping on the stream is answered without touching a model. Behaviour only, no timings."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.common.admission import MIN_SAMPLES, OVERLOAD_PREFIX
from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from services.router.worker_client import ping_message
from tests.support.models import write_python_model
from tests.support.processes import start_service

#: Per-request service time of the "paced" model (unbatched: one at a time).
DELAY_S = 0.2


def request(value: float = 1.0, name: str = "slow") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=name)
    req.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.full(4, value, np.float32).tobytes())
    return req


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    repo = tmp_path_factory.mktemp("admission-models")
    write_python_model(repo, "slow", delay_s=0.01, max_batch_size=1, max_queue_size=1000)
    write_python_model(repo, "paced", delay_s=DELAY_S, max_batch_size=1, max_queue_size=1000)
    write_python_model(repo, "held", delay_s=2.0, max_batch_size=1, max_queue_size=1000)
    service = start_service(
        ["worker", "--model-repository", str(repo), "--port", "0", "--max-in-flight-per-version", "3"]
    )
    yield service
    assert service.terminate() == 0, service.logs()


async def test_the_call_past_the_version_cap_is_refused_at_once(worker):
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        held = [asyncio.ensure_future(stub.ModelInfer(request(i, "held"), timeout=30)) for i in range(3)]
        await asyncio.sleep(0.5)  # the three are admitted (one computing, two queued)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            # A deadline far shorter than the held calls' 2 s: refused, not waited out.
            await stub.ModelInfer(request(9, "held"), timeout=1.5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details().startswith(OVERLOAD_PREFIX)
        assert "limit is 3" in info.value.details()
        # Another version has a bound of its own; health calls are never counted.
        await stub.ModelInfer(request(1, "slow"), timeout=10)
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
        results = await asyncio.gather(*held)
        assert all(r.outputs for r in results)
        await stub.ModelInfer(request(1, "held"), timeout=30)  # room again once they finished


async def test_a_deadline_shorter_than_the_expected_wait_is_refused(worker):
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(-(-MIN_SAMPLES // 3)):  # the worker learns the version's service time
            await asyncio.gather(*(stub.ModelInfer(request(i, "paced"), timeout=30) for i in range(3)))
        ahead = [asyncio.ensure_future(stub.ModelInfer(request(i, "paced"), timeout=30)) for i in range(2)]
        await asyncio.sleep(DELAY_S / 2)
        # Two calls of DELAY_S each ahead (under the cap of 3); a deadline of a fifth of one
        # call cannot be met, so it is refused instead of waiting its deadline out.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelInfer(request(5, "paced"), timeout=DELAY_S / 5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
        assert info.value.details().startswith(OVERLOAD_PREFIX)
        assert "left of the request's deadline" in info.value.details()
        await asyncio.gather(*ahead)


async def test_a_liveness_ping_is_answered_on_the_stream(worker):
    async with grpc.aio.insecure_channel(worker.address) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")()
        await call.write(ping_message(7))
        answer = pb.ModelStreamInferResponse.FromString(await call.read())
        assert answer.error_message == ""
        assert answer.infer_response.id == "ping-7"
        await call.done_writing()
