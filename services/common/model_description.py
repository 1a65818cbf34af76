"""How a model version describes itself over OIP: metadata, config, version order.

Router and worker answer ``ModelMetadata`` and ``ModelConfig`` for the same versions —
the router from the registry's copy of the signature, the worker from what it loaded —
and tritonclient users compare the two, so both build their answers here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.common.datatypes import DATATYPES
from services.common.signature import Signature
from services.gen.inference import grpc_service_pb2 as pb

#: Triton's platform names for our backends (what tritonclient users expect to see).
TRITON_PLATFORMS: dict[str, str] = {
    "torchscript": "pytorch_libtorch",
    "torch_export": "pytorch_torch_export",
    "onnx": "onnxruntime_onnx",
    "tensorrt": "tensorrt_plan",
    "python": "python",
}

#: OIP datatype name -> the ModelConfig enum (BYTES is Triton's TYPE_STRING).
CONFIG_DATATYPES: dict[str, int] = {
    name: pb.DataType.Value("TYPE_STRING" if name == "BYTES" else f"TYPE_{name}") for name in DATATYPES
}


def platform_of(backend: str) -> str:
    """Triton's platform name for a backend; an unknown backend is named as itself."""
    return TRITON_PLATFORMS.get(backend, backend)


def version_order(version: str) -> tuple[int, int | str]:
    """Sort key: integer versions numerically ("10" after "9"), anything else after."""
    return (0, int(version)) if version.isdigit() else (1, version)


def ordered_versions(versions: Iterable[str]) -> list[str]:
    return sorted(versions, key=version_order)


@dataclass(frozen=True, slots=True)
class Batching:
    """The dynamic-batching settings a ModelConfig reports (None where batching is off)."""

    preferred_batch_sizes: Sequence[int]
    max_queue_delay_us: int
    max_queue_size: int


@dataclass(frozen=True, slots=True)
class Instances:
    """How many engine instances serve the version, and on what kind of device."""

    count: int
    device: str


def metadata_response(
    name: str, versions: Iterable[str], backend: str, signature: Signature
) -> pb.ModelMetadataResponse:
    """ModelMetadata: shapes carry the batch dimension as -1 when the model batches."""
    batch = [-1] if signature.batched else []
    response = pb.ModelMetadataResponse(name=name, versions=ordered_versions(versions), platform=platform_of(backend))
    for spec in signature.inputs:
        response.inputs.add(name=spec.name, datatype=spec.datatype, shape=[*batch, *spec.shape])
    for spec in signature.outputs:
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=[*batch, *spec.shape])
    return response


def config_response(
    name: str,
    backend: str,
    signature: Signature,
    batching: Batching | None,
    instances: Instances | None = None,
) -> pb.ModelConfigResponse:
    """ModelConfig in Triton's form: dims exclude the batch dimension, as Triton's do."""
    config = pb.ModelConfig(
        name=name, platform=platform_of(backend), backend=backend, max_batch_size=signature.max_batch_size
    )
    for spec in signature.inputs:
        config.input.add(name=spec.name, data_type=CONFIG_DATATYPES[spec.datatype], dims=list(spec.shape))
    for spec in signature.outputs:
        config.output.add(name=spec.name, data_type=CONFIG_DATATYPES[spec.datatype], dims=list(spec.shape))
    if instances is not None:
        kind = pb.ModelInstanceGroup.KIND_CPU if instances.device == "cpu" else pb.ModelInstanceGroup.KIND_GPU
        config.instance_group.add(name=f"{name}_0", count=instances.count, kind=kind)
    if batching is not None:
        config.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
        config.dynamic_batching.default_queue_policy.max_queue_size = batching.max_queue_size
    return pb.ModelConfigResponse(config=config)
