"""Stream entries: JSON and raw tensors in, results out, poison reasons."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.common.signature import Signature, TensorSpec
from services.jobs.stream_codec import Poison, decode_event, result_fields

SIG = Signature(inputs=(TensorSpec("IN", "FP32", (4,)),), outputs=(TensorSpec("OUT", "FP32", (4,)),),
                max_batch_size=8)


def test_json_and_raw_entries_decode_to_the_same_row():
    row = np.array([1, 2, 3, 4], dtype=np.float32)
    a = decode_event("1-0", {b"inputs": json.dumps({"IN": row.tolist()}).encode()}, SIG)
    b = decode_event("1-1", {b"IN:data": row.tobytes(), b"IN:datatype": b"FP32", b"IN:shape": b"4"}, SIG)
    np.testing.assert_array_equal(a.inputs["IN"], b.inputs["IN"])
    assert a.shape_key() == b.shape_key()
    fields = result_fields(a, {"OUT": row * 2}, {"OUT": "FP32"})
    assert fields[:2] == [b"id", b"1-0"] and json.loads(fields[3]) == {"OUT": [2, 4, 6, 8]}
    raw = dict(zip(*[iter(result_fields(b, {"OUT": row * 2}, {"OUT": "FP32"}))] * 2, strict=True))
    assert np.frombuffer(raw[b"OUT:data"], dtype=np.float32).tolist() == [2, 4, 6, 8]


@pytest.mark.parametrize(("fields", "reason"), [
    ({b"inputs": b"{"}, "not JSON"),
    ({b"inputs": b"[1]"}, "not an object"),
    ({b"inputs": b'{"IN": [1, 2]}'}, "shape [2] does not fit [4]"),
    ({b"IN:data": b"\x00" * 8, b"IN:datatype": b"FP32"}, "8 bytes"),
    ({b"IN:data": b"\x00" * 16, b"IN:datatype": b"INT32"}, "datatype INT32, expected FP32"),
    ({b"x": b"y"}, "no field 'inputs'"),
])
def test_poison_entries_say_why(fields, reason):
    with pytest.raises(Poison) as caught:
        decode_event("1-0", fields, SIG)
    assert reason in str(caught.value)
