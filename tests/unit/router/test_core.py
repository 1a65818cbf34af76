"""The request path of Router.infer against fake workers: what is forwarded, and when."""

from __future__ import annotations

import time

import numpy as np
import pytest

from services.common.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from services.gen.inference import grpc_service_pb2 as pb
from services.router.balancer import Balancer
from services.router.core import Router
from services.router.settings import RouterSettings
from services.router.table import build_snapshot

from .tables import DATA_KEY, LIMITED_KEY, table, worker


class RecordingWorker:
    def __init__(self, address: str) -> None:
        self.address = address
        self.seen: list[tuple[pb.ModelInferRequest, dict]] = []

    async def infer(self, forward, timeout_s: float) -> bytes:
        request = pb.ModelInferRequest.FromString(forward.raw + forward.overrides)
        self.seen.append((request, dict(forward.trace or ())))
        response = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                         id=request.id)
        response.outputs.add(name="output__0", datatype="FP32", shape=[1, 4])
        response.raw_output_contents.append(request.raw_input_contents[0])
        return response.SerializeToString()

    async def close(self, grace=None) -> None:
        pass


def digits_request(version: str = "", rows: int = 1) -> bytes:
    request = pb.ModelInferRequest(model_name="digits", model_version=version, id="r")
    request.inputs.add(name="input__0", datatype="FP32", shape=[rows, 4])
    request.raw_input_contents.append(np.zeros((rows, 4), "<f4").tobytes())
    return request.SerializeToString()


@pytest.fixture
async def router():
    fakes = {a: RecordingWorker(a) for a in ("w1:1", "w2:1")}
    r = Router(RouterSettings())
    r.balancer = Balancer(lambda a: fakes[a])
    r.install(build_snapshot(table([worker("w1:1", [("digits", "1"), ("digits", "2")]),
                                    worker("w2:1", [("digits", "1")])])))
    r.fakes = fakes
    yield r
    await r.close()


def headers(key: str = DATA_KEY, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **extra}


def deadline() -> float:
    return time.monotonic() + 5


async def test_split_sets_version_and_forwards_trace_not_auth(router):
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    result = await router.infer(digits_request(), headers(traceparent=trace, **{"x-user-id": "u"}), deadline())
    response = pb.ModelInferResponse.FromString(result.response)
    assert result.version in ("1", "2") and response.model_version == result.version
    seen = [s for w in router.fakes.values() for s in w.seen]
    (request, metadata), = seen
    assert request.model_version == result.version
    # The caller's trace context travels in the request's parameters (the stream link keeps
    # it); no metadata, so the authorization header never reaches a worker.
    assert request.parameters["traceparent"].string_param == trace
    assert metadata == {}


async def test_named_version_is_forwarded_unchanged(router):
    raw = digits_request(version="2")
    await router.infer(raw, headers(), deadline())
    assert router.fakes["w1:1"].seen[0][0].SerializeToString() == raw


async def test_fallback_when_chosen_version_has_no_worker(router):
    router.install(build_snapshot(table([worker("w2:1", [("digits", "1")])], revision=2,
                                        weights={"2": 100}, fallback_version="1")))
    result = await router.infer(digits_request(), headers(), deadline())
    assert result.version == "1"
    router.install(build_snapshot(table([worker("w2:1", [("digits", "1")])], revision=3,
                                        weights={"2": 100}, fallback_version="")))
    with pytest.raises(Unavailable):
        await router.infer(digits_request(), headers(), deadline())


async def test_rejections_before_forwarding(router):
    with pytest.raises(NotFound):
        await router.infer(digits_request(version="7"), headers(), deadline())
    with pytest.raises(InvalidArgument, match="max_batch_size"):
        await router.infer(digits_request(rows=9), headers(), deadline())
    with pytest.raises(InvalidArgument, match="batch size 0"):
        await router.infer(digits_request(rows=0), headers(), deadline())
    with pytest.raises(InvalidArgument, match="not a valid"):
        await router.infer(b"\xff\xff", headers(), deadline())
    assert not any(w.seen for w in router.fakes.values())


async def test_rate_limited_key_gets_retry_after(router):
    # No Redis configured: the per-replica limiter applies (1/s, burst 2).
    for _ in range(2):
        await router.infer(digits_request(), headers(LIMITED_KEY), deadline())
    with pytest.raises(ResourceExhausted) as info:
        await router.infer(digits_request(), headers(LIMITED_KEY), deadline())
    assert 0 < info.value.retry_after_s <= 1.0


async def test_per_model_limit_has_a_bucket_per_model(router):
    from .tables import PER_MODEL_KEY

    router.install(build_snapshot(table([worker("w1:1", [("digits", "1"), ("digits", "2"), ("text", "1")])],
                                        revision=5)))
    await router.infer(digits_request(), headers(PER_MODEL_KEY), deadline())
    with pytest.raises(ResourceExhausted):
        await router.infer(digits_request(), headers(PER_MODEL_KEY), deadline())
    text = pb.ModelInferRequest(model_name="text")
    text.inputs.add(name="text", datatype="BYTES", shape=[1, 1])
    text.raw_input_contents.append(b"\x02\x00\x00\x00hi")
    await router.infer(text.SerializeToString(), headers(PER_MODEL_KEY), deadline())  # its own bucket
