"""Request decoding and validation: every malformed input is named in the error."""

import struct

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.common.signature import Signature, TensorSpec
from services.common.tensors import decode_request, fill_outputs, parse_bytes_tensor, serialize_bytes_tensor
from services.gen.inference import grpc_service_pb2 as pb

SIG = Signature(
    inputs=(TensorSpec("x", "FP32", (4,)), TensorSpec("t", "BYTES", (1,))),
    outputs=(TensorSpec("y", "FP32", (2,)),),
    max_batch_size=8,
)


def request(rows=2, x=None, t=None, raw=True, **overrides):
    req = pb.ModelInferRequest(model_name="m")
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) if x is None else x
    t = np.array([[b"a%d" % i] for i in range(rows)], dtype=object) if t is None else t
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.inputs.add(name="t", datatype="BYTES", shape=list(t.shape))
    if raw:
        req.raw_input_contents.append(x.tobytes())
        req.raw_input_contents.append(serialize_bytes_tensor(t))
    else:
        req.inputs[0].contents.fp32_contents.extend(x.reshape(-1).tolist())
        req.inputs[1].contents.bytes_contents.extend(t.reshape(-1).tolist())
    for key, value in overrides.items():
        setattr(req, key, value)
    return req


@pytest.mark.parametrize("raw", [True, False])
def test_raw_and_typed_contents_decode_to_the_same_arrays(raw):
    decoded = decode_request(request(raw=raw), SIG)
    assert decoded.batch_size == 2
    np.testing.assert_array_equal(decoded.inputs["x"], np.arange(8, dtype=np.float32).reshape(2, 4))
    assert decoded.inputs["t"].tolist() == [[b"a0"], [b"a1"]]


def test_raw_decoding_does_not_copy():
    req = request()
    decoded = decode_request(req, SIG)
    assert not decoded.inputs["x"].flags.owndata


def expect(message, req):
    with pytest.raises(InvalidArgument, match=message):
        decode_request(req, SIG)


def test_unknown_input():
    req = request()
    req.inputs[0].name = "z"
    expect("unknown input 'z'", req)


def test_duplicate_input():
    req = request()
    req.inputs[1].name = "x"
    req.inputs[1].datatype = "FP32"
    expect("duplicate input 'x'", req)


def test_missing_input():
    req = request()
    del req.inputs[1]
    del req.raw_input_contents[1]
    expect("missing input.*t", req)


def test_wrong_datatype():
    req = request()
    req.inputs[0].datatype = "INT32"
    expect("input 'x': datatype 'INT32' does not match expected FP32", req)


def test_unknown_datatype():
    req = request()
    req.inputs[0].datatype = "FP33"
    expect("not a known datatype", req)


def test_wrong_rank():
    req = request()
    req.inputs[0].shape[:] = [8]
    expect("input 'x': rank 1", req)


def test_wrong_dimension():
    req = request()
    req.inputs[0].shape[:] = [4, 2]
    expect("input 'x': dimension 1 is 2, expected 4", req)


def test_byte_length_mismatch():
    req = request()
    req.raw_input_contents[0] = req.raw_input_contents[0][:-1]
    expect("input 'x': raw contents are 31 bytes.*needs 32", req)


def test_batch_over_max():
    expect("input 'x': batch size 9 exceeds max_batch_size 8", request(rows=9))


def test_negative_dimension():
    req = request()
    req.inputs[0].shape[:] = [-2, 4]
    expect("input 'x': negative dimension", req)


def test_overflowing_dimensions():
    req = request()
    req.inputs[0].shape[:] = [2**31, 2**31]
    expect("input 'x': shape .* overflows the element limit", req)


def test_broken_bytes_prefix():
    req = request()
    req.raw_input_contents[1] = struct.pack("<I", 100) + b"abcdef"
    expect("input 't': BYTES item 0 declares 100 bytes", req)


def test_truncated_bytes_prefix():
    req = request()
    req.raw_input_contents[1] = struct.pack("<I", 5) + b"abcde" + b"\x01"
    expect("input 't': BYTES data ends after 1 of 2 items", req)


VARIABLE = Signature(
    inputs=(TensorSpec("t", "BYTES", (-1,)),), outputs=(TensorSpec("y", "FP32", (2,)),), max_batch_size=8
)


def bytes_request(shape: list[int], body: bytes) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="t", datatype="BYTES", shape=shape)
    req.raw_input_contents.append(body)
    return req


@pytest.mark.parametrize("materialize", [True, False])  # worker and router
def test_bytes_count_is_checked_against_the_body_before_allocating(materialize):
    # 35 bytes claiming 2^24 items: decoding must not size an object array from the claim.
    import tracemalloc

    req = bytes_request([1, 2**24], b"\x03\x00\x00\x00abc" * 5)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgument, match=r"input 't': shape claims 16777216 BYTES items but the 35-byte body"):
            decode_request(req, VARIABLE, materialize=materialize)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoding a 35-byte request allocated {peak} bytes"


def test_bytes_shape_at_the_element_limit_is_invalid_not_internal():
    with pytest.raises(InvalidArgument, match="holds at most 8"):
        decode_request(bytes_request([1, 2**40], b"\x00" * 35), VARIABLE)


def test_bytes_element_count_is_bounded():
    from services.common.tensors import MAX_BYTES_ELEMENTS

    count = MAX_BYTES_ELEMENTS + 1
    with pytest.raises(InvalidArgument, match=f"{count} BYTES items exceed the limit"):
        decode_request(bytes_request([1, count], b"\x00" * (4 * count)), VARIABLE)
    typed = bytes_request([1, count], b"")
    del typed.raw_input_contents[:]
    typed.inputs[0].contents.bytes_contents.extend([b""] * count)
    with pytest.raises(InvalidArgument, match="exceed the limit"):
        decode_request(typed, VARIABLE)


def test_raw_and_typed_mixed_for_one_input():
    req = request()
    req.inputs[0].contents.fp32_contents.extend([1.0] * 8)
    expect("input 'x': has both typed contents and raw_input_contents", req)


def test_typed_count_mismatch():
    req = request(raw=False)
    req.inputs[0].contents.fp32_contents.append(1.0)
    expect("input 'x': fp32_contents holds 9 values", req)


def test_batch_sizes_must_agree():
    req = request()
    t = np.array([[b"a"]] * 3, dtype=object)
    req.inputs[1].shape[:] = [3, 1]
    req.raw_input_contents[1] = serialize_bytes_tensor(t)
    expect("input 't': batch size 3 differs", req)


def test_raw_count_must_match_inputs():
    req = request()
    del req.raw_input_contents[1]
    expect("raw_input_contents has 1 entries for 2 inputs", req)


def test_unknown_requested_output():
    req = request()
    req.outputs.add(name="nope")
    expect("unknown output 'nope'", req)


def test_fp16_has_no_typed_field():
    sig = Signature(inputs=(TensorSpec("h", "FP16", (2,)),), outputs=SIG.outputs, max_batch_size=0)
    req = pb.ModelInferRequest()
    req.inputs.add(name="h", datatype="FP16", shape=[2])
    with pytest.raises(InvalidArgument, match="send it in raw_input_contents"):
        decode_request(req, sig)


def test_bytes_roundtrip_and_outputs_are_raw():
    items = np.array([b"", b"hello", "caf\u00e9".encode()], dtype=object)
    assert parse_bytes_tensor(serialize_bytes_tensor(items), 3, "t").tolist() == items.tolist()
    response = pb.ModelInferResponse()
    fill_outputs(response, {"y": np.ones((2, 2), np.float64), "s": items}, ["y", "s"], {"y": "FP32"})
    assert [o.datatype for o in response.outputs] == ["FP32", "BYTES"]
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [1.0] * 4
    assert parse_bytes_tensor(response.raw_output_contents[1], 3, "s").tolist() == items.tolist()


@pytest.mark.parametrize("materialize", [True, False])
def test_zero_rows_are_refused_by_the_decoder(materialize):
    with pytest.raises(InvalidArgument, match="batch size 0"):
        empty = request(x=np.zeros((0, 4), dtype=np.float32), t=np.zeros((0, 1), dtype=object))
        decode_request(empty, SIG, materialize=materialize)
