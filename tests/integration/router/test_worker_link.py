"""The router's stream link (many requests over one ModelStreamInfer call) against a real worker.

What a unary ModelInfer call gives for free must hold on the stream too: each caller gets
its own answer, byte for byte; the worker's status codes reach the caller; deadlines reach
the worker; a dead or draining worker fails only what it held, as UNAVAILABLE, which the
router retries elsewhere.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from services.router.worker_client import Forward, UpstreamError, WorkerTransport
from tests.integration.router.cluster import metric
from tests.support.models import build_examples, write_python_model
from tests.support.processes import free_port, start_service

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def fwd(raw: bytes, caller_id: str = "") -> Forward:
    """The Forward record the router would hand the link (deadlines here are the calls' own)."""
    return Forward(raw, 0.0, caller_id=caller_id)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("link-models")
    examples = build_examples()
    (root / "digits").symlink_to(examples / "digits")
    # One request at a time, 0.4 s each: enough to hold requests in flight on purpose.
    write_python_model(root, "slow", delay_s=0.4, max_batch_size=1, max_queue_size=16)
    return root


@pytest.fixture(scope="module")
def worker(repo):
    service = start_service(["worker", "--model-repository", str(repo), "--port", "0"])
    yield service
    assert service.terminate() == 0, service.logs()


def digits_request(seed: int, request_id: str, rows: int = 1) -> pb.ModelInferRequest:
    x = np.random.default_rng(seed).random((rows, 64), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="digits", model_version="1", id=request_id)
    request.inputs.add(name="input__0", datatype="FP32", shape=[rows, 64])
    request.raw_input_contents.append(x.tobytes())
    return request


def slow_request(request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="slow", model_version="1", id=request_id)
    request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return request


async def test_concurrent_requests_get_their_own_answers_as_unary_calls_do(worker):
    link = WorkerTransport(worker.address, MAX_MESSAGE_BYTES, "stream")
    unary = WorkerTransport(worker.address, MAX_MESSAGE_BYTES, "unary")
    try:
        requests = [digits_request(i, f"caller-{i}" if i % 3 else "", rows=1 + i % 4) for i in range(60)]
        raws = [r.SerializeToString() for r in requests]
        # One at a time each request is its own batch: the bytes must be exactly a unary call's.
        for raw, request in zip(raws[:5], requests[:5], strict=True):
            assert await link.infer(fwd(raw, request.id), 10.0) == await unary.infer(fwd(raw), 10.0)
        # All at once they batch together, and each must still come back to its own caller.
        calls = (link.infer(fwd(raw, r.id), 10.0) for raw, r in zip(raws, requests, strict=True))
        streamed = [pb.ModelInferResponse.FromString(b) for b in await asyncio.gather(*calls)]
        answers = await asyncio.gather(*(unary.infer(fwd(raw), 10.0) for raw in raws))
        direct = [pb.ModelInferResponse.FromString(b) for b in answers]
        assert [r.id for r in streamed] == [r.id for r in requests]
        for got, want in zip(streamed, direct, strict=True):
            assert got.outputs == want.outputs
            np.testing.assert_allclose(  # batch composition moves the last float bits
                np.frombuffer(got.raw_output_contents[0], np.float32),
                np.frombuffer(want.raw_output_contents[0], np.float32),
                rtol=1e-4,
                atol=1e-6,
            )
    finally:
        await link.close()
        await unary.close()
    assert metric(worker.metrics_url, "shunter_requests_total", method="ModelStreamInfer", code="OK") >= 65


async def test_worker_statuses_reach_the_caller_and_the_stream_keeps_serving(worker):
    link = WorkerTransport(worker.address, MAX_MESSAGE_BYTES, "stream")
    try:
        unknown = pb.ModelInferRequest(model_name="nope", id="a").SerializeToString()
        with pytest.raises(UpstreamError) as info:
            await link.infer(fwd(unknown, "a"), 10.0)
        assert info.value.code == grpc.StatusCode.NOT_FOUND and "nope" in info.value.message

        wrong = digits_request(0, "b")
        wrong.inputs[0].name = "not_an_input"
        with pytest.raises(UpstreamError) as info:
            await link.infer(fwd(wrong.SerializeToString(), "b"), 10.0)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "not_an_input" in info.value.message

        ok = await link.infer(fwd(digits_request(1, "c").SerializeToString(), "c"), 10.0)
        assert pb.ModelInferResponse.FromString(ok).id == "c"
    finally:
        await link.close()


async def test_the_deadline_reaches_the_worker_which_drops_the_late_request(worker):
    link = WorkerTransport(worker.address, MAX_MESSAGE_BYTES, "stream")
    dropped_before = metric(worker.metrics_url, "shunter_requests_total", model="slow", code="DEADLINE_EXCEEDED")
    try:
        first = asyncio.ensure_future(link.infer(fwd(slow_request("first").SerializeToString(), "first"), 10.0))
        await asyncio.sleep(0.05)  # the first holds the only slot for 0.4 s
        with pytest.raises(UpstreamError) as info:
            await link.infer(fwd(slow_request("late").SerializeToString(), "late"), 0.15)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert pb.ModelInferResponse.FromString(await first).id == "first"
        # The worker saw the deadline too: it dropped the late request instead of computing it.
        for _ in range(50):
            dropped = metric(worker.metrics_url, "shunter_requests_total", model="slow", code="DEADLINE_EXCEEDED")
            if dropped > dropped_before:
                break
            await asyncio.sleep(0.1)
        assert dropped == dropped_before + 1
    finally:
        await link.close()


async def test_a_request_at_the_size_limit_goes_unary_and_the_stream_keeps_its_requests(repo):
    """Within the limit for the router, over it with the link's fields appended: the worker
    would end the whole stream (RESOURCE_EXHAUSTED on the call). It goes unary instead."""
    limit = 1024 * 1024
    service = start_service(
        ["worker", "--model-repository", str(repo), "--port", "0", "--max-message-bytes", str(limit)]
    )
    link = WorkerTransport(service.address, limit, "stream")
    try:
        held = asyncio.ensure_future(link.infer(fwd(slow_request("held").SerializeToString(), "held"), 10.0))
        await asyncio.sleep(0.05)  # on the stream, being computed
        big = pb.ModelInferRequest(model_name="nope", id="big")
        big.raw_input_contents.append(b"")
        padding = limit - len(big.SerializeToString()) - 8
        big.raw_input_contents[0] = b"\0" * padding
        raw = big.SerializeToString()
        assert limit - 16 < len(raw) <= limit
        with pytest.raises(UpstreamError) as info:
            await link.infer(fwd(raw, "big"), 10.0)
        # The worker's own verdict on the request, not a broken stream.
        assert info.value.code == grpc.StatusCode.NOT_FOUND, info.value.message
        assert pb.ModelInferResponse.FromString(await held).id == "held"
    finally:
        await link.close()
        assert service.terminate() == 0, service.logs()


async def test_a_killed_worker_fails_what_it_held_as_unavailable_then_a_new_stream_serves(repo):
    port = free_port()
    args = ["worker", "--model-repository", str(repo), "--port", str(port)]
    service = start_service(args)
    link = WorkerTransport(service.address, MAX_MESSAGE_BYTES, "stream")
    try:
        raw = slow_request().SerializeToString()
        held = [asyncio.ensure_future(link.infer(fwd(raw, ""), 30.0)) for _ in range(3)]
        await asyncio.sleep(0.2)
        service.kill()
        results = await asyncio.wait_for(asyncio.gather(*held, return_exceptions=True), 10)
        assert all(isinstance(r, UpstreamError) and r.code == grpc.StatusCode.UNAVAILABLE for r in results), results

        service = start_service(args)
        for _ in range(100):  # the channel reconnects with backoff
            try:
                response = await link.infer(fwd(digits_request(2, "again").SerializeToString(), "again"), 5.0)
                break
            except UpstreamError as exc:
                assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
                await asyncio.sleep(0.1)
        assert pb.ModelInferResponse.FromString(response).id == "again"
    finally:
        await link.close()
        service.terminate()


async def test_sigterm_answers_what_the_stream_holds_then_ends_it_with_ok(repo):
    """A draining worker ends its streams itself (OK) instead of leaving them open until its
    grace runs out and the server cancels them, which would hold its shutdown that long."""
    service = start_service(["worker", "--model-repository", str(repo), "--port", "0", "--grace-s", "600"])
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
            await call.write(digits_request(3, "warm"))
            assert (await call.read()).infer_response.id == "warm"
            await call.write(slow_request("drained"))
            await asyncio.sleep(0.1)  # taken by the worker before it is told to stop
            service.proc.terminate()
            answered = await call.read()
            assert not answered.error_message and answered.infer_response.id == "drained"
            # A hang guard, not a timing: left open, the stream would last the 600 s grace.
            assert await asyncio.wait_for(call.read(), 60) is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
        code = await asyncio.get_running_loop().run_in_executor(None, service.proc.wait, 120)
        assert code == 0, service.logs()
    finally:
        service.kill()
