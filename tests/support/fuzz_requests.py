"""Hypothesis strategies for hostile inference requests, shared by the fuzz tests.

Four shapes of input, because each reaches a different layer: structured requests (valid
protobuf, nonsense meaning: unknown names, wrong datatypes, negative or huge shapes,
contents that disagree with their shape) test decoding and validation; random bytes test
the protobuf parser at the edge; valid requests with bytes flipped, cut or inserted test
the raw-bytes fast path, which reads the wire format itself; and streams mix all three in
one ModelStreamInfer call, where one bad message must not end the stream for the rest.

The targets are the cluster of tests/integration/router/cluster.py: ``calc`` (FP32[4]) and
``echo`` (BYTES[1]).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from services.gen.inference import grpc_service_pb2 as pb

DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BF16", "BYTES")
#: Dimensions a hostile client claims: the ordinary, the empty, the negative (variable in a
#: config, never valid in a request) and the ones that overflow an allocation.
DIMENSIONS = st.one_of(
    st.integers(min_value=0, max_value=8),
    st.sampled_from([-1, -2, 2**31, 2**31 - 1, 2**40, 2**62, -(2**63)]),
)
NAMES = st.one_of(st.sampled_from(["calc", "echo", "", "calc/1", "../calc"]), st.text(max_size=12))
VERSIONS = st.one_of(st.sampled_from(["", "1", "2", "3", "0", "-1", "99", "latest"]), st.text(max_size=6))
INPUT_NAMES = st.one_of(st.sampled_from(["IN", "TEXT", ""]), st.text(max_size=8))


def _parameter() -> st.SearchStrategy[pb.InferParameter]:
    return st.one_of(
        st.booleans().map(lambda v: pb.InferParameter(bool_param=v)),
        st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda v: pb.InferParameter(int64_param=v)),
        st.text(max_size=16).map(lambda v: pb.InferParameter(string_param=v)),
        st.floats(allow_nan=True, allow_infinity=True).map(lambda v: pb.InferParameter(double_param=v)),
        st.integers(min_value=0, max_value=2**64 - 1).map(lambda v: pb.InferParameter(uint64_param=v)),
    )


PARAMETER_KEYS = st.one_of(
    st.sampled_from(["sequence_id", "priority", "timeout", "binary_data_output", "shunter-trace", ""]),
    st.text(max_size=10),
)
PARAMETERS = st.dictionaries(PARAMETER_KEYS, _parameter(), max_size=3)


@st.composite
def _contents(draw) -> pb.InferTensorContents | None:
    which = draw(st.sampled_from(["none", "fp32", "int64", "bytes", "bool", "fp64"]))
    if which == "none":
        return None
    count = st.integers(min_value=0, max_value=12)
    n = draw(count)
    if which == "fp32":
        return pb.InferTensorContents(fp32_contents=draw(st.lists(st.floats(width=32), min_size=n, max_size=n)))
    if which == "fp64":
        return pb.InferTensorContents(fp64_contents=draw(st.lists(st.floats(), min_size=n, max_size=n)))
    if which == "int64":
        values = st.integers(min_value=-(2**63), max_value=2**63 - 1)
        return pb.InferTensorContents(int64_contents=draw(st.lists(values, min_size=n, max_size=n)))
    if which == "bool":
        return pb.InferTensorContents(bool_contents=draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    return pb.InferTensorContents(bytes_contents=draw(st.lists(st.binary(max_size=16), min_size=n, max_size=n)))


@st.composite
def _raw_body(draw, datatype: str, shape: list[int]) -> bytes:
    """A raw tensor body: often the right size for the claimed shape, often not."""
    kind = draw(st.sampled_from(["sized", "random", "empty", "bytes-items"]))
    if kind == "empty":
        return b""
    if kind == "random":
        return draw(st.binary(max_size=64))
    if kind == "bytes-items" or datatype == "BYTES":
        # Length-prefixed items, some with lengths that lie about what follows.
        items = draw(st.lists(st.binary(max_size=8), max_size=6))
        body = b"".join(len(item).to_bytes(4, "little") + item for item in items)
        if draw(st.booleans()):
            body += draw(st.sampled_from([b"\xff\xff\xff\x7f", b"\x10\x00\x00\x00ab", b"\x01"]))
        return body
    elements = int(np.prod([d for d in shape if 0 <= d <= 64], dtype=np.int64)) if shape else 1
    width = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
             "UINT32": 4, "INT32": 4, "FP32": 4}.get(datatype, 8)
    size = min(elements * width, 4096)
    return draw(st.binary(min_size=size, max_size=size))


@st.composite
def structured_requests(draw) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=draw(NAMES), model_version=draw(VERSIONS), id=draw(st.text(max_size=8)))
    for key, value in draw(PARAMETERS).items():
        request.parameters[key].CopyFrom(value)
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        datatype = draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=6)))
        shape = draw(st.lists(DIMENSIONS, max_size=4))
        tensor = request.inputs.add(name=draw(INPUT_NAMES), datatype=datatype, shape=shape)
        for key, value in draw(st.dictionaries(PARAMETER_KEYS, _parameter(), max_size=1)).items():
            tensor.parameters[key].CopyFrom(value)
        if raw:
            request.raw_input_contents.append(draw(_raw_body(datatype, shape)))
        elif (contents := draw(_contents())) is not None:
            tensor.contents.CopyFrom(contents)
    if raw and draw(st.booleans()):
        # More (or fewer) raw bodies than inputs.
        request.raw_input_contents.append(draw(st.binary(max_size=16)))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        request.outputs.add(name=draw(st.one_of(st.sampled_from(["OUT", "LENGTH"]), st.text(max_size=8))))
    return request


def valid_requests() -> list[bytes]:
    """Serialized requests the cluster serves, as seeds for mutation."""
    calc = pb.ModelInferRequest(model_name="calc", id="seed")
    calc.inputs.add(name="IN", datatype="FP32", shape=[2, 4])
    calc.raw_input_contents.append(np.arange(8, dtype="<f4").tobytes())
    echo = pb.ModelInferRequest(model_name="echo")
    echo.inputs.add(name="TEXT", datatype="BYTES", shape=[2, 1])
    echo.raw_input_contents.append(b"".join(len(t).to_bytes(4, "little") + t for t in (b"hello", b"fuzz")))
    typed = pb.ModelInferRequest(model_name="calc", model_version="1")
    typed.inputs.add(name="IN", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
    return [m.SerializeToString() for m in (calc, echo, typed)]


@st.composite
def mutated_requests(draw) -> bytes:
    """A valid request with a few bytes flipped, cut out or inserted."""
    data = bytearray(draw(st.sampled_from(valid_requests())))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if not data:
            break
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        if op == "flip":
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif op == "cut":
            del data[at : at + draw(st.integers(min_value=1, max_value=4))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        else:
            del data[at:]
    return bytes(data)


RANDOM_BYTES = st.binary(max_size=256)
#: One wire message for a stream: any of the three kinds, as bytes.
STREAM_MESSAGE = st.one_of(
    structured_requests().map(lambda m: m.SerializeToString()), mutated_requests(), RANDOM_BYTES,
    st.sampled_from(valid_requests()),
)
STREAMS = st.lists(STREAM_MESSAGE, min_size=1, max_size=5)
