"""Router and worker describe a version the same way, in Triton's terms."""

from services.common import model_description as md
from services.common.signature import Signature, TensorSpec
from services.gen.inference import grpc_service_pb2 as pb

SIG = Signature(
    inputs=(TensorSpec("x", "FP32", (4,)), TensorSpec("t", "BYTES", (1,))),
    outputs=(TensorSpec("y", "INT64", (2,)),),
    max_batch_size=8,
)


def test_versions_are_ordered_numerically_then_by_name():
    assert md.ordered_versions(["10", "9", "b", "1", "a"]) == ["1", "9", "10", "a", "b"]


def test_metadata_has_the_batch_dimension_and_triton_platform():
    response = md.metadata_response("digits", {"3": None, "10": None}, "torchscript", SIG)
    assert response.versions == ["3", "10"]
    assert response.platform == "pytorch_libtorch"
    described = [(t.name, t.datatype, list(t.shape)) for t in response.inputs]
    assert described == [("x", "FP32", [-1, 4]), ("t", "BYTES", [-1, 1])]
    assert list(response.outputs[0].shape) == [-1, 2]


def test_unbatched_metadata_has_no_batch_dimension():
    unbatched = Signature(inputs=SIG.inputs, outputs=SIG.outputs, max_batch_size=0)
    assert list(md.metadata_response("m", ["1"], "onnx", unbatched).inputs[0].shape) == [4]


def test_config_maps_bytes_to_type_string_and_reports_batching_and_instances():
    config = md.config_response(
        "digits", "onnx", SIG, md.Batching((4, 8), 500, 64), md.Instances(2, "cuda")
    ).config
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    assert [i.data_type for i in config.input] == [pb.DataType.TYPE_FP32, pb.DataType.TYPE_STRING]
    assert list(config.input[0].dims) == [4]
    assert config.output[0].data_type == pb.DataType.TYPE_INT64
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU


def test_config_without_batching_or_instances_leaves_them_unset():
    config = md.config_response("m", "custom", SIG, None).config
    assert config.platform == "custom"
    assert not config.HasField("dynamic_batching") and not config.instance_group
