"""Appending fields to serialized messages overrides them, as the forwarding path relies on."""

from __future__ import annotations

from services.gen.inference import grpc_service_pb2 as pb
from services.router import wire


def test_varint_matches_protobuf():
    for value in (1, 127, 128, 300, 16_383, 16_384, 2**31, 2**40):
        message = pb.StatisticDuration(count=value)
        assert message.SerializeToString() == b"\x08" + wire.varint(value)


def test_with_model_version_overrides_and_keeps_everything_else():
    request = pb.ModelInferRequest(model_name="digits", model_version="1", id="abc")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(b"\x00" * 8)
    parsed = pb.ModelInferRequest.FromString(wire.with_model_version(request.SerializeToString(), "2" * 200))
    assert parsed.model_version == "2" * 200
    parsed.model_version = "1"
    assert parsed == request


def test_with_id_on_response():
    response = pb.ModelInferResponse(model_name="m", model_version="3")
    parsed = pb.ModelInferResponse.FromString(wire.with_id(response.SerializeToString(), "req-7"))
    assert parsed.id == "req-7" and parsed.model_version == "3"


def test_stream_wrappers():
    inner = pb.ModelInferResponse(model_name="m", id="1").SerializeToString()
    ok = pb.ModelStreamInferResponse.FromString(wire.stream_response(inner))
    assert ok.infer_response.id == "1" and not ok.error_message
    bad = pb.ModelStreamInferResponse.FromString(wire.stream_error("boom", inner))
    assert bad.error_message == "boom" and bad.infer_response.id == "1"
