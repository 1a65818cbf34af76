"""The request built from ModelMetadata: shapes, dtypes, batch rows, raw encoding."""

from __future__ import annotations

import numpy as np
import pytest

from services.bench.payload import SENTENCES, InputPlan, build_request, make_inputs, plan_inputs
from services.bench.runner import BenchError, BenchOptions, process_plans
from services.common.datatypes import NUMPY_DTYPES
from services.common.signature import Signature, TensorSpec
from services.common.tensors import decode_request
from services.gen.inference import grpc_service_pb2 as pb


def metadata(*inputs: tuple[str, str, list[int]]) -> pb.ModelMetadataResponse:
    meta = pb.ModelMetadataResponse(name="m", versions=["1"])
    for name, datatype, shape in inputs:
        meta.inputs.add(name=name, datatype=datatype, shape=shape)
    return meta


def test_triton_style_metadata_with_batch_dim():
    meta = metadata(("input__0", "FP32", [-1, 64]))
    plans = plan_inputs(meta, max_batch_size=64, batch_rows=4, dim_length=16, config_ranks={"input__0": 1})
    assert plans == [InputPlan("input__0", "FP32", (4, 64))]


def test_metadata_without_batch_dim_gets_one_prepended():
    meta = metadata(("TEXT", "BYTES", [1]))
    plans = plan_inputs(meta, max_batch_size=32, batch_rows=2, dim_length=16, config_ranks={"TEXT": 1})
    assert plans == [InputPlan("TEXT", "BYTES", (2, 1))]


def test_variable_dims_get_the_configured_length():
    meta = metadata(("ids", "INT64", [-1, -1]))
    # The config says the input has rank 1 without the batch dim: the first -1 is the batch.
    plans = plan_inputs(meta, max_batch_size=8, batch_rows=1, dim_length=12, config_ranks={"ids": 1})
    assert plans == [InputPlan("ids", "INT64", (1, 12))]


def test_without_config_a_leading_minus_one_is_the_batch_dim():
    meta = metadata(("a", "FP16", [-1, 3]), ("b", "INT32", [-1, -1]))
    plans = plan_inputs(meta, max_batch_size=None, batch_rows=5, dim_length=7)
    assert plans == [InputPlan("a", "FP16", (5, 3)), InputPlan("b", "INT32", (5, 7))]


def test_unbatched_model_rejects_batch_rows():
    meta = metadata(("x", "FP32", [3]))
    assert plan_inputs(meta, max_batch_size=0, batch_rows=1, dim_length=4) == [InputPlan("x", "FP32", (3,))]
    with pytest.raises(ValueError, match="no batch dimension"):
        plan_inputs(meta, max_batch_size=0, batch_rows=2, dim_length=4)


def test_batch_rows_over_the_limit_is_refused():
    meta = metadata(("x", "FP32", [-1, 3]))
    with pytest.raises(ValueError, match="max_batch_size 4"):
        plan_inputs(meta, max_batch_size=4, batch_rows=5, dim_length=4)


@pytest.mark.parametrize("datatype", ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "BF16", "FP32", "FP64"])
def test_random_inputs_have_the_right_dtype_and_shape(datatype):
    arrays = make_inputs([InputPlan("x", datatype, (2, 3))], np.random.default_rng(0))
    assert arrays["x"].shape == (2, 3)
    assert arrays["x"].dtype == NUMPY_DTYPES[datatype]


def test_request_round_trips_through_the_shared_decoder():
    plans = [InputPlan("input__0", "FP32", (3, 64)), InputPlan("TEXT", "BYTES", (3, 1))]
    arrays = make_inputs(plans, np.random.default_rng(1))
    assert all(item.decode() in SENTENCES for item in arrays["TEXT"].reshape(-1))
    wire = build_request("m", "2", plans, arrays).SerializeToString()
    request = pb.ModelInferRequest.FromString(wire)
    assert request.model_name == "m" and request.model_version == "2"
    signature = Signature(
        inputs=(TensorSpec("input__0", "FP32", (64,)), TensorSpec("TEXT", "BYTES", (1,))),
        outputs=(TensorSpec("out", "FP32", (1,)),),
        max_batch_size=8,
    )
    decoded = decode_request(request, signature)
    assert decoded.batch_size == 3
    np.testing.assert_array_equal(decoded.inputs["input__0"], arrays["input__0"])
    assert list(decoded.inputs["TEXT"].reshape(-1)) == list(arrays["TEXT"].reshape(-1))


def test_load_is_split_over_processes():
    closed = process_plans(BenchOptions(target="t", model="m", concurrency=10, processes=4), b"x")
    assert [p.concurrency for p in closed] == [3, 3, 2, 2]
    assert len({p.seed for p in closed}) == 4
    few = process_plans(BenchOptions(target="t", model="m", concurrency=2, processes=4), b"x")
    assert [p.concurrency for p in few] == [1, 1]
    opened = process_plans(BenchOptions(target="t", model="m", rate=300.0, processes=3, max_inflight=100), b"x")
    assert sum(p.rate for p in opened) == pytest.approx(300.0)
    assert sum(p.max_inflight for p in opened) == 100
    assert all(p.payload == b"x" for p in opened)


def test_connections_are_spread_over_processes():
    plans = process_plans(BenchOptions(target="t", model="m", concurrency=16, processes=2, connections=5), b"x")
    assert [p.connections for p in plans] == [3, 2]
    # Every process needs a connection of its own, whatever was asked for.
    assert [p.connections for p in process_plans(BenchOptions(target="t", model="m", processes=3), b"x")] == [1, 1, 1]
    few = process_plans(BenchOptions(target="t", model="m", processes=3, connections=1), b"x")
    assert [p.connections for p in few] == [1, 1, 1]
    with pytest.raises(BenchError, match="--connections"):
        BenchOptions(target="t", model="m", connections=0).validate()
