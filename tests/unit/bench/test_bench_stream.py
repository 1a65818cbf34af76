"""``--stream`` pieces without a server: ids and timeouts appended to request bytes,
statuses read off stream answers, and the options that cannot go with a stream."""

from __future__ import annotations

import grpc
import pytest

from services.bench.runner import BenchError, BenchOptions, process_plans
from services.bench.stream import status_of, timeout_field, with_id
from services.common.inference_parameters import failed_stream_response
from services.gen.inference import grpc_service_pb2 as pb


@pytest.mark.parametrize("request_id", ["7", "p1.0-123456", "x" * 200])
def test_an_appended_id_overrides_the_requests_own(request_id: str):
    original = pb.ModelInferRequest(model_name="digits", id="theirs")
    original.inputs.add(name="input__0", datatype="FP32", shape=[1, 64])
    parsed = pb.ModelInferRequest.FromString(with_id(original.SerializeToString(), request_id))
    assert parsed.id == request_id
    assert parsed.model_name == "digits" and parsed.inputs[0].shape == [1, 64]


def test_the_timeout_rides_on_each_message_and_overrides_the_requests_own():
    # The server reads each message's deadline here (µs); the stream call has none.
    original = pb.ModelInferRequest(model_name="digits")
    original.parameters["timeout"].int64_param = 10
    parsed = pb.ModelInferRequest.FromString(with_id(original.SerializeToString() + timeout_field(0.25), "1"))
    assert parsed.parameters["timeout"].int64_param == 250_000 and parsed.id == "1"
    # Never 0: that means "no limit" to the server.
    assert pb.ModelInferRequest.FromString(timeout_field(1e-9)).parameters["timeout"].int64_param == 1


def test_status_of_stream_answers():
    assert status_of(pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(id="1"))) == "OK"
    failed = failed_stream_response(pb.ModelInferRequest(id="2"), "too fast", grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert status_of(failed) == "RESOURCE_EXHAUSTED"
    assert status_of(pb.ModelStreamInferResponse(error_message="from another server")) == "UNKNOWN"


def test_stream_is_refused_with_a_header_that_varies_per_call():
    with pytest.raises(BenchError, match="--vary-header needs unary calls"):
        BenchOptions(target="t", model="m", stream=True, vary_header="x-user-id").validate()


def test_every_process_plan_streams():
    plans = process_plans(BenchOptions(target="t", model="m", concurrency=8, processes=2, stream=True), b"x")
    assert [p.stream for p in plans] == [True, True]
    assert not any(p.stream for p in process_plans(BenchOptions(target="t", model="m", processes=2), b"x"))
