"""Build the one request a benchmark sends, from the model's own metadata.

The request is built and serialized once per run; every call then sends the same
bytes, so the client spends no time on protobuf or NumPy per call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from services.common.datatypes import NUMPY_DTYPES
from services.common.tensors import serialize_bytes_tensor
from services.gen.inference import grpc_service_pb2 as pb

#: Short sentences for BYTES inputs (text models): varied words, similar lengths.
SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A shunter moves railway wagons between tracks in the yard.",
    "Serving models at scale means batching requests on the server.",
    "The weather today is sunny with a light breeze from the west.",
    "She ordered a coffee and read the morning paper by the window.",
    "Latency percentiles tell more than the average ever will.",
    "The library closes early on public holidays.",
    "Gradient descent slowly found its way to a better minimum.",
    "Please remember to water the plants while I am away.",
    "The train to the coast leaves from platform nine at noon.",
    "He fixed the bicycle chain with a borrowed wrench.",
    "Our team shipped the new release after a long week.",
    "Mountains looked blue in the distance as the sun set.",
    "Every request carries a deadline that the server respects.",
    "The recipe needs two eggs, flour, sugar and a pinch of salt.",
    "A good benchmark never lets the client become the bottleneck.",
)


@dataclass(frozen=True)
class InputPlan:
    """One input of the request: its name, datatype and concrete shape."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def plan_inputs(
    metadata: pb.ModelMetadataResponse,
    *,
    max_batch_size: int | None,
    batch_rows: int,
    dim_length: int,
    config_ranks: Mapping[str, int] | None = None,
) -> list[InputPlan]:
    """Concrete input shapes from ModelMetadata.

    ``max_batch_size`` comes from ModelConfig when the server offers it; ``None`` means
    unknown, and then a leading -1 on every input is taken as the batch dimension (as
    Triton reports it). Servers differ on whether metadata shapes include the batch
    dimension: ``config_ranks`` (input name -> rank without the batch dimension, from
    ModelConfig) settles it per input; without it a leading -1 is taken as the batch
    dimension. Remaining -1 dimensions become ``dim_length``.
    """
    if batch_rows < 1:
        raise ValueError(f"--batch-rows must be >= 1, got {batch_rows}")
    if dim_length < 1:
        raise ValueError(f"the length for -1 dimensions must be >= 1, got {dim_length}")
    if not metadata.inputs:
        raise ValueError(f"model '{metadata.name}' reports no inputs in its metadata")
    shapes = [list(t.shape) for t in metadata.inputs]
    leading_minus_one = all(s and s[0] == -1 for s in shapes)
    batched = leading_minus_one if max_batch_size is None else max_batch_size > 0
    if batched and max_batch_size and batch_rows > max_batch_size:
        raise ValueError(f"--batch-rows {batch_rows} exceeds the model's max_batch_size {max_batch_size}")
    if not batched and batch_rows != 1:
        raise ValueError("the model takes no batch dimension; --batch-rows must be 1")
    plans = []
    for tensor, shape in zip(metadata.inputs, shapes, strict=True):
        if tensor.datatype not in NUMPY_DTYPES:
            raise ValueError(f"input '{tensor.name}': unsupported datatype {tensor.datatype!r}")
        rank = (config_ranks or {}).get(tensor.name)
        if not batched:
            strip = False
        elif rank is not None:
            strip = len(shape) == rank + 1
        else:
            strip = leading_minus_one
        dims = shape[1:] if strip else shape
        concrete = tuple(dim_length if d == -1 else int(d) for d in dims)
        if batched:
            concrete = (batch_rows, *concrete)
        plans.append(InputPlan(tensor.name, tensor.datatype, concrete))
    return plans


def random_array(datatype: str, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Random values of the right dtype: small non-negative ints (safe as ids), unit floats."""
    if datatype == "BYTES":
        picks = rng.integers(0, len(SENTENCES), size=shape)
        out = np.empty(tuple(shape), dtype=np.object_)
        out.reshape(-1)[:] = [SENTENCES[i].encode() for i in picks.reshape(-1)]
        return out
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype.kind in "iu":
        return rng.integers(0, 100, size=shape).astype(dtype)
    return rng.random(size=shape, dtype=np.float64).astype(dtype)


def make_inputs(plans: Sequence[InputPlan], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One random array per planned input (also used by in-process engine benchmarks)."""
    return {plan.name: random_array(plan.datatype, plan.shape, rng) for plan in plans}


def build_request(
    model: str,
    version: str,
    plans: Sequence[InputPlan],
    arrays: dict[str, np.ndarray],
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying every input as raw little-endian contents."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for plan in plans:
        array = arrays[plan.name]
        tensor = request.inputs.add()
        tensor.name = plan.name
        tensor.datatype = plan.datatype
        tensor.shape.extend(plan.shape)
        if plan.datatype == "BYTES":
            request.raw_input_contents.append(serialize_bytes_tensor(array))
        else:
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request
