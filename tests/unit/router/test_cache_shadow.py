"""Canonical cache keys and shadow output comparison."""

from __future__ import annotations

import numpy as np

from services.common.signature import Signature, TensorSpec
from services.common.tensors import decode_request, serialize_bytes_tensor
from services.gen.inference import grpc_service_pb2 as pb
from services.router.cache import canonical_digest, strip_id
from services.router.shadow import outputs_agree

SIG = Signature(
    inputs=(TensorSpec("b", "FP32", (2,)), TensorSpec("a", "BYTES", (1,))),
    outputs=(TensorSpec("y", "FP32", (2,)),),
    max_batch_size=4,
)


def raw_request(values=(1.0, 2.0), text=b"hi", id_="", order=("b", "a")) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id=id_)
    data = {
        "b": ("FP32", [1, 2], np.array(values, dtype="<f4").tobytes()),
        "a": ("BYTES", [1, 1], serialize_bytes_tensor(np.array([text], dtype=object))),
    }
    for name in order:
        datatype, shape, payload = data[name]
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(payload)
    return request


def typed_request(values=(1.0, 2.0), text=b"hi") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="b", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend(values)
    request.inputs.add(name="a", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(text)
    return request


def digest(request) -> str:
    return canonical_digest(request, decode_request(request, SIG, materialize=False))


def test_digest_is_canonical_across_encodings_order_and_id():
    base = digest(raw_request())
    assert digest(raw_request(id_="x")) == base
    assert digest(raw_request(order=("a", "b"))) == base
    assert digest(typed_request()) == base


def test_digest_changes_with_data_outputs_and_parameters():
    base = digest(raw_request())
    assert digest(raw_request(values=(1.0, 2.5))) != base
    assert digest(raw_request(text=b"ho")) != base
    with_output = raw_request()
    with_output.outputs.add(name="y")
    assert digest(with_output) != base
    with_param = raw_request()
    with_param.parameters["k"].int64_param = 3
    assert digest(with_param) != base


def test_strip_id_edits_the_bytes_as_a_serialiser_would():
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="abc")
    response.outputs.add(name="y", datatype="FP32", shape=[1, 2])
    response.raw_output_contents.append(b"\x00" * 8)
    stripped = strip_id(response.SerializeToString())
    response.id = ""
    assert stripped == response.SerializeToString()
    assert strip_id(stripped) == stripped  # no id: unchanged


def response(values, datatype="FP32", name="y") -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(model_name="m")
    out.outputs.add(name=name, datatype=datatype, shape=[1, len(values)])
    out.raw_output_contents.append(np.array(values, dtype="<f4").tobytes())
    return out


def test_outputs_agree():
    assert outputs_agree(response([1.0, 2.0]), response([1.0, 2.0000001]))
    assert not outputs_agree(response([1.0, 2.0]), response([1.0, 2.5]))
    assert not outputs_agree(response([1.0, 2.0]), response([1.0, 2.0], name="z"))
    assert not outputs_agree(response([1.0, 2.0]), response([1.0, 2.0, 3.0]))


async def test_shadow_mirror_is_bounded_and_counts():
    import asyncio

    from services.router import metrics
    from services.router.shadow import ShadowMirror

    def count(outcome: str) -> float:
        return metrics.SHADOW.labels("m", "9", outcome)._value.get()

    gate = asyncio.Event()
    primary = response([1.0, 2.0]).SerializeToString()

    async def slow() -> bytes:
        await gate.wait()
        return primary

    async def broken() -> bytes:
        raise RuntimeError("worker gone")

    mirror = ShadowMirror(pb.ModelInferResponse, max_in_flight=1)
    before = {o: count(o) for o in ("agree", "dropped", "error")}
    mirror.mirror("m", "9", primary, slow)
    mirror.mirror("m", "9", primary, slow)  # no slot left: dropped, never queued
    assert count("dropped") == before["dropped"] + 1
    gate.set()
    await asyncio.sleep(0.01)
    assert count("agree") == before["agree"] + 1
    mirror.mirror("m", "9", primary, broken)
    await asyncio.sleep(0.01)
    assert count("error") == before["error"] + 1
    await mirror.close()
