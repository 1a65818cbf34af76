"""Decode and validate request tensors; encode response tensors.

The same validation runs in the router (before forwarding) and in the worker (before
queueing), so nothing malformed reaches an engine. Raw contents are decoded without
copying (``np.frombuffer`` over the request's bytes); typed ``contents`` are converted.
Every rejection names the input and what is wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from services.common.datatypes import CONTENTS_FIELD, DATATYPES, NUMPY_DTYPES, datatype_of
from services.common.errors import InvalidArgument
from services.common.signature import Signature, TensorSpec

#: Largest element count one tensor may declare; beyond it a shape is "overflowing".
MAX_ELEMENTS = 1 << 40
#: Largest element count of one BYTES tensor. Its items become Python objects (8 bytes of
#: pointer plus the item each), so the count, not the body size, bounds what decoding costs.
MAX_BYTES_ELEMENTS = 1 << 22

_LENGTH_PREFIX = struct.Struct("<I")


@dataclass(slots=True)
class DecodedRequest:
    """A validated request: its inputs as arrays, its row count and requested outputs."""

    inputs: dict[str, np.ndarray]
    #: Rows along the batch dimension (1 for models without a batch dimension).
    batch_size: int
    #: Requested output names, in request order; empty means all outputs.
    outputs: tuple[str, ...]


def check_bytes_count(count: int, name: str) -> None:
    """Refuse a BYTES tensor with more items than one request may carry."""
    if count > MAX_BYTES_ELEMENTS:
        raise InvalidArgument(
            f"input '{name}': {count} BYTES items exceed the limit of {MAX_BYTES_ELEMENTS} per tensor"
        )


def parse_bytes_tensor(buffer: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Split a raw BYTES buffer (4-byte little-endian length, then the item) into items.

    The count comes from the request's shape, so it is checked against the body before
    anything is allocated: every item takes at least its 4-byte prefix.
    """
    view = memoryview(buffer)
    total = len(view)
    if count * _LENGTH_PREFIX.size > total:
        raise InvalidArgument(
            f"input '{name}': shape claims {count} BYTES items but the {total}-byte body holds at most "
            f"{total // _LENGTH_PREFIX.size}"
        )
    check_bytes_count(count, name)
    items = np.empty(count, dtype=np.object_)
    offset = 0
    for i in range(count):
        if offset + 4 > total:
            raise InvalidArgument(
                f"input '{name}': BYTES data ends after {i} of {count} items (missing length prefix)"
            )
        (length,) = _LENGTH_PREFIX.unpack_from(view, offset)
        offset += 4
        if offset + length > total:
            raise InvalidArgument(
                f"input '{name}': BYTES item {i} declares {length} bytes but only {total - offset} remain"
            )
        items[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != total:
        raise InvalidArgument(
            f"input '{name}': {total - offset} trailing bytes after {count} BYTES items"
        )
    return items


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """Length-prefix every item of a BYTES array (str items are UTF-8 encoded)."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH_PREFIX.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _check_shape(spec: TensorSpec, shape: list[int], signature: Signature) -> int:
    """Validate a request shape against the spec; return the element count."""
    name = spec.name
    expected_rank = len(spec.shape) + (1 if signature.batched else 0)
    if len(shape) != expected_rank:
        wanted = (["batch"] if signature.batched else []) + [str(d) for d in spec.shape]
        raise InvalidArgument(
            f"input '{name}': rank {len(shape)} (shape {shape}) does not match the expected "
            f"rank {expected_rank} ([{', '.join(wanted)}])"
        )
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidArgument(f"input '{name}': negative dimension in shape {shape}")
        count *= dim
        if count > MAX_ELEMENTS:
            raise InvalidArgument(f"input '{name}': shape {shape} overflows the element limit")
    dims = shape[1:] if signature.batched else shape
    for i, (got, want) in enumerate(zip(dims, spec.shape, strict=True)):
        if want != -1 and got != want:
            raise InvalidArgument(
                f"input '{name}': dimension {i + (1 if signature.batched else 0)} is {got}, "
                f"expected {want} (shape {shape}, expected {list(spec.shape)} after the batch dimension)"
                if signature.batched
                else f"input '{name}': shape {shape} does not match expected {list(spec.shape)}"
            )
    return count


def _typed_array(tensor, spec: TensorSpec, count: int) -> np.ndarray:
    datatype = spec.datatype
    field_name = CONTENTS_FIELD.get(datatype)
    if field_name is None:
        raise InvalidArgument(
            f"input '{spec.name}': {datatype} has no typed contents field; send it in raw_input_contents"
        )
    values = getattr(tensor.contents, field_name)
    if len(values) != count:
        raise InvalidArgument(
            f"input '{spec.name}': {field_name} holds {len(values)} values, shape {list(tensor.shape)} "
            f"needs {count}"
        )
    if datatype == "BYTES":
        check_bytes_count(count, spec.name)
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array
    try:
        return np.array(values, dtype=NUMPY_DTYPES[datatype])
    except OverflowError:
        raise InvalidArgument(f"input '{spec.name}': a value is out of range for {datatype}") from None


def _has_typed_contents(tensor) -> bool:
    return tensor.HasField("contents") and tensor.contents.ByteSize() > 0


def decode_request(request, signature: Signature, *, materialize: bool = True) -> DecodedRequest:
    """Validate a ModelInferRequest against a signature and decode its inputs.

    With ``materialize=False`` (the router) everything is checked, BYTES prefixes
    included, but fixed-size raw tensors are not turned into arrays.
    """
    inputs = request.inputs
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; "
            "when raw contents are used every input must have one"
        )
    seen: set[str] = set()
    arrays: dict[str, np.ndarray] = {}
    batch_size: int | None = None
    for index, tensor in enumerate(inputs):
        name = tensor.name
        spec = signature.input_by_name.get(name)
        if spec is None:
            known = ", ".join(sorted(signature.input_by_name)) or "none"
            raise InvalidArgument(f"unknown input '{name}' (expected: {known})")
        if name in seen:
            raise InvalidArgument(f"duplicate input '{name}'")
        seen.add(name)
        if tensor.datatype != spec.datatype:
            hint = "" if tensor.datatype in DATATYPES else " (not a known datatype)"
            raise InvalidArgument(
                f"input '{name}': datatype '{tensor.datatype}'{hint} does not match expected {spec.datatype}"
            )
        shape = list(tensor.shape)
        count = _check_shape(spec, shape, signature)
        rows = shape[0] if signature.batched else 1
        if signature.batched:
            if rows > signature.max_batch_size:
                raise InvalidArgument(
                    f"input '{name}': batch size {rows} exceeds max_batch_size {signature.max_batch_size}"
                )
            if batch_size is not None and rows != batch_size:
                raise InvalidArgument(
                    f"input '{name}': batch size {rows} differs from the other inputs' {batch_size}"
                )
        batch_size = rows
        if raw:
            if _has_typed_contents(tensor):
                raise InvalidArgument(
                    f"input '{name}': has both typed contents and raw_input_contents; use one"
                )
            buffer = raw[index]
            if spec.datatype == "BYTES":
                array = parse_bytes_tensor(buffer, count, name)
                arrays[name] = array.reshape(shape)
                continue
            itemsize = NUMPY_DTYPES[spec.datatype].itemsize
            if len(buffer) != count * itemsize:
                raise InvalidArgument(
                    f"input '{name}': raw contents are {len(buffer)} bytes, shape {shape} of "
                    f"{spec.datatype} needs {count * itemsize}"
                )
            if materialize:
                arrays[name] = np.frombuffer(buffer, dtype=NUMPY_DTYPES[spec.datatype]).reshape(shape)
        else:
            arrays[name] = _typed_array(tensor, spec, count).reshape(shape)
    missing = [spec.name for spec in signature.inputs if spec.name not in seen]
    if missing:
        raise InvalidArgument(f"missing input(s): {', '.join(missing)}")
    if signature.batched and not batch_size:
        raise InvalidArgument("batch size 0: send at least one row")
    outputs: list[str] = []
    for requested in request.outputs:
        if requested.name not in signature.output_names:
            known = ", ".join(sorted(signature.output_names))
            raise InvalidArgument(f"unknown output '{requested.name}' requested (model has: {known})")
        outputs.append(requested.name)
    return DecodedRequest(inputs=arrays, batch_size=batch_size or 0, outputs=tuple(outputs))


def fill_outputs(
    response,
    arrays: Mapping[str, np.ndarray],
    names: Iterable[str],
    datatypes: Mapping[str, str] | None = None,
) -> None:
    """Append named arrays to a ModelInferResponse as raw little-endian contents."""
    for name in names:
        array = arrays[name]
        datatype = (datatypes or {}).get(name) or datatype_of(array)
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        if datatype == "BYTES":
            response.raw_output_contents.append(serialize_bytes_tensor(array))
        else:
            want = NUMPY_DTYPES[datatype]
            if array.dtype != want:
                array = array.astype(want)
            response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
