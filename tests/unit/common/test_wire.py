"""Appending fields to serialized messages overrides them, as the forwarding path relies on."""

from __future__ import annotations

import pytest

from services.common import wire
from services.gen.inference import grpc_service_pb2 as pb


def test_varint_matches_protobuf():
    for value in (1, 127, 128, 300, 16_383, 16_384, 2**31, 2**40):
        message = pb.StatisticDuration(count=value)
        assert message.SerializeToString() == b"\x08" + wire.varint(value)


def test_an_appended_model_version_field_overrides_and_keeps_everything_else():
    request = pb.ModelInferRequest(model_name="digits", model_version="1", id="abc")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(b"\x00" * 8)
    parsed = pb.ModelInferRequest.FromString(request.SerializeToString() + wire.model_version_field("2" * 200))
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


def test_int64_parameter_is_added_and_a_later_entry_wins():
    request = pb.ModelInferRequest(model_name="m")
    request.parameters["timeout"].int64_param = 5
    request.parameters["other"].string_param = "kept"
    raw = request.SerializeToString() + wire.int64_parameter_field("timeout", 12_345_678_901)
    parsed = pb.ModelInferRequest.FromString(raw)
    assert parsed.parameters["timeout"].int64_param == 12_345_678_901
    assert parsed.parameters["other"].string_param == "kept"


def test_split_stream_response_reads_error_and_inner_response():
    inner = pb.ModelInferResponse(model_name="m", id="7", raw_output_contents=[b"\x01" * 300])
    ok = pb.ModelStreamInferResponse(infer_response=inner).SerializeToString()
    assert wire.split_stream_response(ok) == (None, inner.SerializeToString())
    failed = pb.ModelStreamInferResponse(error_message="bad input", infer_response=pb.ModelInferResponse(id="8"))
    error, payload = wire.split_stream_response(failed.SerializeToString())
    assert error == "bad input" and pb.ModelInferResponse.FromString(payload).id == "8"


def test_find_and_replace_id_give_the_bytes_the_worker_would_have_sent():
    for caller_id in ("", "req-1", "x" * 300):
        common = {"model_name": "m", "model_version": "1", "raw_output_contents": [b"\x02" * 64]}
        sent = pb.ModelInferResponse(id="12", **common)
        wanted = pb.ModelInferResponse(id=caller_id, **common)
        raw = sent.SerializeToString()
        found, start, stop = wire.find_id(raw)
        assert found == "12"
        assert wire.replace_id(raw, start, stop, caller_id) == wanted.SerializeToString()


def test_find_id_without_one_and_on_garbage():
    assert wire.find_id(pb.ModelInferResponse(model_name="m").SerializeToString())[0] == ""
    with pytest.raises(wire.WireError, match="truncated"):
        wire.find_id(b"\x0a\x7f" + b"short")


def test_string_parameter_field_overrides_as_protobuf_parses_it():
    request = pb.ModelInferRequest(model_name="m")
    request.parameters["traceparent"].string_param = "old"
    raw = request.SerializeToString() + wire.string_parameter_field("traceparent", "new") \
        + wire.string_parameter_field("tracestate", "k=v")
    parsed = pb.ModelInferRequest.FromString(raw)
    assert parsed.parameters["traceparent"].string_param == "new"
    assert parsed.parameters["tracestate"].string_param == "k=v"
