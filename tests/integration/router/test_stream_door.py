"""One ModelStreamInfer stream to the router, as heavy clients use it: real processes only.

What a stream client can rely on, as with Triton: every response carries its request's id
(responses may come in any order); a message that fails gets an error response on the
stream, with its own status and message, and the stream stays open for the next; a client
that cancels leaves nothing in flight; ``--stream-max-in-flight`` stops the router reading
a stream while that many of its messages are out. Counts, codes and the router's own
metrics are asserted, never timings.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.gen.inference import grpc_service_pb2 as pb
from tests.integration.router.client import auth, calc_request, echo_request, output
from tests.integration.router.cluster import Cluster, metric, wait_for
from tests.reliability.cluster import PACED_CONFIG, Small, paced_repository, start_small
from tests.support.models import SLOW_MODEL

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
#: The ``slow`` model holds every batch this long: long enough that what a test sends
#: while a batch runs finds it still running.
SLOW_S = 2.0
STREAM_MAX_IN_FLIGHT = 3
VERSION_CAP = 2


def code_of(response: pb.ModelStreamInferResponse) -> grpc.StatusCode | None:
    """The status a failed message's response carries (None for an answer)."""
    if not response.error_message:
        return None
    value = response.infer_response.parameters["shunter_status_code"].int64_param
    return next(code for code in grpc.StatusCode if code.value[0] == value)


def raw_stream(channel: grpc.aio.Channel, key: str | None) -> grpc.aio.StreamStreamCall:
    """A ModelStreamInfer call that writes bytes as given (so a test can send garbage)."""
    return channel.stream_stream(STREAM, response_deserializer=pb.ModelStreamInferResponse.FromString)(
        metadata=auth(key)
    )


async def test_ids_errors_and_the_stream_stays_open(cluster: Cluster):
    good = [calc_request(values=(i, 1, 0, 0), id_=f"g{i}") for i in range(24)]
    bad_type = calc_request(id_="bad-type")
    bad_type.inputs[0].datatype = "INT32"
    bad_shape = calc_request(id_="bad-shape")
    bad_shape.inputs[0].shape[:] = [1, 5]
    unknown = calc_request(id_="unknown")
    unknown.model_name = "nope"
    bad = {
        "bad-type": (bad_type, grpc.StatusCode.INVALID_ARGUMENT, "datatype"),
        "bad-shape": (bad_shape, grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        "unknown": (unknown, grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
    }
    async with grpc.aio.insecure_channel(cluster.routers[0].address) as channel:
        call = raw_stream(channel, cluster.keys["data"])
        # Bad messages first and between the good ones: each is answered on its own.
        await call.write(b"\xff\xff not a protobuf")
        for request, _, _ in bad.values():
            await call.write(request.SerializeToString())
        for request in good[:12]:
            await call.write(request.SerializeToString())
        await call.write(bad_type.SerializeToString())
        for request in good[12:]:
            await call.write(request.SerializeToString())
        # An empty id comes back empty, as from Triton.
        await call.write(calc_request(values=(7, 0, 0, 0)).SerializeToString())
        await call.done_writing()
        responses = [response async for response in call]
        assert await call.code() == grpc.StatusCode.OK

    assert len(responses) == 1 + len(bad) + len(good) + 1 + 1
    unparseable = [r for r in responses if not r.infer_response.id and r.error_message]
    assert len(unparseable) == 1 and code_of(unparseable[0]) == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest" in unparseable[0].error_message
    by_id: dict[str, list[pb.ModelStreamInferResponse]] = {}
    for response in responses:
        by_id.setdefault(response.infer_response.id, []).append(response)
    for i, request in enumerate(good):
        (response,) = by_id[request.id]
        assert not response.error_message, response.error_message
        assert response.infer_response.model_name == "calc"
        np.testing.assert_array_equal(output(response.infer_response), [[2 * i, 2, 0, 0]])
    for name, (_, code, words) in bad.items():
        for response in by_id[name]:
            assert code_of(response) == code, name
            assert words in response.error_message, (name, response.error_message)
    assert len(by_id["bad-type"]) == 2
    (anonymous,) = [r for r in by_id[""] if not r.error_message]
    np.testing.assert_array_equal(output(anonymous.infer_response), [[14, 0, 0, 0]])


async def test_auth_is_per_message_and_keeps_its_codes(cluster: Cluster):
    async with grpc.aio.insecure_channel(cluster.routers[0].address) as channel:
        # A key limited to calc: echo is refused per message, calc still served.
        call = raw_stream(channel, cluster.keys["calc-only"])
        await call.write(echo_request(id_="echo").SerializeToString())
        await call.write(calc_request(id_="calc").SerializeToString())
        await call.done_writing()
        by_id = {r.infer_response.id: r async for r in call}
        assert await call.code() == grpc.StatusCode.OK
        assert code_of(by_id["echo"]) == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(by_id["calc"]) is None
        # No key at all: every message says UNAUTHENTICATED, and the stream ends OK.
        call = raw_stream(channel, None)
        for i in range(3):
            await call.write(calc_request(id_=f"n{i}").SerializeToString())
        await call.done_writing()
        responses = [r async for r in call]
        assert await call.code() == grpc.StatusCode.OK
    assert sorted(r.infer_response.id for r in responses) == ["n0", "n1", "n2"]
    assert {code_of(r) for r in responses} == {grpc.StatusCode.UNAUTHENTICATED}


# -- a cluster with a slow model: cancellation, backpressure, admission --------------------


def slow_request(id_: str) -> bytes:
    request = pb.ModelInferRequest(model_name="slow", id=id_)
    request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    return request.SerializeToString()


def paced_request(id_: str) -> bytes:
    request = pb.ModelInferRequest(model_name="paced", id=id_)
    request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    return request.SerializeToString()


@pytest.fixture(scope="module")
def slow_cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream-door")
    repository = paced_repository(root / "models")
    (repository / "slow" / "1").mkdir(parents=True)
    (repository / "slow" / "config.yaml").write_text(PACED_CONFIG)
    (repository / "slow" / "1" / "model.py").write_text(SLOW_MODEL.format(delay_s=SLOW_S))
    cluster: Small = start_small(root, repository)
    try:
        cluster.start_worker("paced,slow")
        cluster.add_router("--stream-max-in-flight", str(STREAM_MAX_IN_FLIGHT))
        cluster.add_router("--max-in-flight-per-version", str(VERSION_CAP))
        cluster.create_key("data")
        yield cluster
    finally:
        cluster.stop()


def stream_in_flight(router) -> float:
    return metric(router.metrics_url, "shunter_in_flight_requests", service="router", method="ModelStreamInfer")


def stream_count(router, code: str) -> float:
    return metric(router.metrics_url, "shunter_requests_total", service="router", method="ModelStreamInfer", code=code)


async def test_client_cancel_leaves_nothing_in_flight(slow_cluster: Small):
    router = slow_cluster.routers[0]
    cancelled = stream_count(router, "CANCELLED")
    async with grpc.aio.insecure_channel(router.address) as channel:
        call = raw_stream(channel, slow_cluster.keys["data"])
        await call.write(slow_request("a"))
        await call.write(slow_request("b"))
        await asyncio.to_thread(wait_for, lambda: stream_in_flight(router) == 2, 30, "both messages held")
        call.cancel()
        await asyncio.to_thread(wait_for, lambda: stream_in_flight(router) == 0, 30, "nothing left in flight")
        assert stream_count(router, "CANCELLED") - cancelled == 2
        # The router serves the next stream as before.
        call = raw_stream(channel, slow_cluster.keys["data"])
        await call.write(paced_request("after"))
        await call.done_writing()
        responses = [r async for r in call]
    assert [(r.infer_response.id, r.error_message) for r in responses] == [("after", "")]


async def test_stream_max_in_flight_holds_the_client_back(slow_cluster: Small):
    # 24 messages written at once; the router takes 3 at a time, so the worker never holds
    # more than 3 of them and never runs a batch of 4 (the model's max), as it would if the
    # router read them all.
    router = slow_cluster.routers[0]
    async with grpc.aio.insecure_channel(router.address) as channel:
        call = raw_stream(channel, slow_cluster.keys["data"])

        async def write_all() -> None:
            for i in range(24):
                await call.write(paced_request(f"p{i}"))
            await call.done_writing()

        writer = asyncio.create_task(write_all())
        responses = [r async for r in call]
        await writer
        assert await call.code() == grpc.StatusCode.OK
        stub = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelStatistics",
            request_serializer=pb.ModelStatisticsRequest.SerializeToString,
            response_deserializer=pb.ModelStatisticsResponse.FromString,
        )
        stats = await stub(pb.ModelStatisticsRequest(name="paced"), metadata=auth(slow_cluster.keys["data"]))
    assert sorted(r.infer_response.id for r in responses) == sorted(f"p{i}" for i in range(24))
    assert not [r.error_message for r in responses if r.error_message]
    sizes = {b.batch_size for s in stats.model_stats for b in s.batch_stats}
    assert sizes and max(sizes) <= STREAM_MAX_IN_FLIGHT, sizes


async def test_admission_refusals_are_per_message(slow_cluster: Small):
    # A router that holds at most 2 requests of a version: of 5 slow messages sent at once,
    # 2 are admitted, 3 refused at once with UNAVAILABLE, and the stream carries on.
    router = slow_cluster.routers[1]
    async with grpc.aio.insecure_channel(router.address) as channel:
        call = raw_stream(channel, slow_cluster.keys["data"])
        for i in range(5):
            await call.write(slow_request(f"s{i}"))
        refused = [await call.read() for _ in range(3)]
        await call.write(paced_request("paced"))
        rest = [await call.read() for _ in range(3)]
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    assert {code_of(r) for r in refused} == {grpc.StatusCode.UNAVAILABLE}
    assert all(f"holds {VERSION_CAP} requests" in r.error_message for r in refused)
    answered = {r.infer_response.id for r in rest}
    refused_ids = {r.infer_response.id for r in refused}
    assert refused_ids | (answered - {"paced"}) == {f"s{i}" for i in range(5)} and "paced" in answered
    assert not [r.error_message for r in rest if r.error_message]
