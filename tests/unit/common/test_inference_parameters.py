"""The status code a failed stream message carries, written by one side and read by the other."""

from __future__ import annotations

import grpc

from services.common import inference_parameters
from services.gen.inference import grpc_service_pb2 as pb


def test_a_failed_stream_response_carries_id_model_and_code():
    request = pb.ModelInferRequest(model_name="digits", model_version="2", id="r-9")
    failed = inference_parameters.failed_stream_response(request, "bad input", grpc.StatusCode.INVALID_ARGUMENT)
    assert failed.error_message == "bad input"
    assert (failed.infer_response.model_name, failed.infer_response.id) == ("digits", "r-9")
    code = inference_parameters.status_of_failed(failed.infer_response.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_response_naming_no_code_or_garbled_reads_as_unknown():
    plain = pb.ModelInferResponse(id="x").SerializeToString()
    assert inference_parameters.status_of_failed(plain) == grpc.StatusCode.UNKNOWN
    assert inference_parameters.status_of_failed(b"\x0a\xff") == grpc.StatusCode.UNKNOWN


def test_timeout_is_microseconds_and_zero_or_less_means_none():
    request = pb.ModelInferRequest()
    assert inference_parameters.timeout_us(request) is None
    for value, expected in ((0, None), (-1, None), (250_000, 250_000)):
        request.parameters[inference_parameters.TIMEOUT].int64_param = value
        assert inference_parameters.timeout_us(request) == expected
