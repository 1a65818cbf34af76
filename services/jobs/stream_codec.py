"""The entry formats of ``shunter stream``: one event is one row of the model's inputs.

An input entry holds either

- ``inputs``: a JSON object, input name → that row's value (per-row shape, no batch
  dimension; nested lists, numbers, strings for BYTES), e.g.
  ``XADD in * inputs '{"IN": [1, 2, 3, 4]}'``; or
- raw tensors, per input ``X``: ``X:data`` (little-endian bytes, row-major; BYTES items
  4-byte-length-prefixed), ``X:datatype`` (FP32, INT64, …) and ``X:shape`` (per-row
  dimensions, comma-separated: ``4`` or ``8,8``).

The result entry in the output stream has ``id`` (the input entry's id) and, for a JSON
input, ``outputs`` (output name → nested list); for a raw input, ``Y:data``,
``Y:datatype`` and ``Y:shape`` per output ``Y``. A dead-lettered entry has ``id``,
``reason`` and the original fields under ``entry:<field>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from services.common.datatypes import NUMPY_DTYPES
from services.common.errors import InvalidArgument
from services.common.signature import Signature
from services.common.tensors import parse_bytes_tensor, serialize_bytes_tensor
from services.jobs.mapping import convert_value


class Poison(Exception):
    """An entry that can never be inferred; the message is the dead-letter reason."""


@dataclass
class Event:
    id: str
    fields: dict[bytes, bytes]
    #: Input name → one row (per-row shape).
    inputs: dict[str, np.ndarray]
    raw: bool

    def shape_key(self) -> tuple:
        return tuple((name, array.shape) for name, array in sorted(self.inputs.items()))


def decode_event(entry_id: str, fields: Mapping[bytes, bytes], signature: Signature) -> Event:
    """Parse one entry against the model's signature; raise Poison with the reason."""
    fields = dict(fields)
    if b"inputs" in fields:
        try:
            values = json.loads(fields[b"inputs"])
        except (ValueError, UnicodeDecodeError) as exc:
            raise Poison(f"field 'inputs' is not JSON: {exc}") from None
        if not isinstance(values, dict):
            raise Poison(f"field 'inputs' is a JSON {type(values).__name__}, not an object of input → value")
        inputs = {}
        for spec in signature.inputs:
            if spec.name not in values:
                raise Poison(f"'inputs' has no '{spec.name}' (the model takes: {_names(signature)})")
            try:
                inputs[spec.name] = convert_value(values[spec.name], spec)
            except ValueError as exc:
                raise Poison(f"input '{spec.name}': {exc}") from None
        return Event(entry_id, fields, inputs, raw=False)
    inputs = {}
    for spec in signature.inputs:
        key = spec.name.encode()
        data, datatype, shape = (fields.get(key + suffix) for suffix in (b":data", b":datatype", b":shape"))
        if data is None:
            raise Poison(f"no field 'inputs' and no '{spec.name}:data' (the model takes: {_names(signature)})")
        if datatype is not None and datatype.decode(errors="replace") != spec.datatype:
            raise Poison(f"input '{spec.name}': datatype {datatype.decode(errors='replace')}, expected {spec.datatype}")
        try:
            dims = tuple(int(d) for d in shape.decode().split(",") if d.strip()) if shape else tuple(spec.shape)
        except ValueError:
            raise Poison(f"input '{spec.name}': shape '{shape!r}' is not comma-separated integers") from None
        if len(dims) != len(spec.shape) or any(w not in (-1, g) for g, w in zip(dims, spec.shape, strict=True)):
            raise Poison(f"input '{spec.name}': shape {list(dims)} does not fit {list(spec.shape)}")
        count = int(np.prod(dims)) if dims else 1
        if spec.datatype == "BYTES":
            try:
                array = parse_bytes_tensor(data, count, spec.name).reshape(dims)
            except InvalidArgument as exc:
                raise Poison(exc.message) from None
        else:
            dtype = NUMPY_DTYPES[spec.datatype]
            if len(data) != count * dtype.itemsize:
                raise Poison(f"input '{spec.name}': {len(data)} bytes, shape {list(dims)} of {spec.datatype} "
                             f"needs {count * dtype.itemsize}")
            array = np.frombuffer(data, dtype=dtype).reshape(dims)
        inputs[spec.name] = array
    return Event(entry_id, fields, inputs, raw=True)


def _names(signature: Signature) -> str:
    return ", ".join(f"{s.name} {s.datatype}{list(s.shape)}" for s in signature.inputs)


def result_fields(event: Event, outputs: Mapping[str, np.ndarray], datatypes: Mapping[str, str]) -> list[bytes]:
    """Field/value pairs of the result entry for one event (its row of each output)."""
    pairs: list[bytes] = [b"id", event.id.encode()]
    if event.raw:
        for name, array in outputs.items():
            datatype = datatypes.get(name, "")
            data = serialize_bytes_tensor(array) if array.dtype == object else np.ascontiguousarray(array).tobytes()
            pairs += [f"{name}:data".encode(), data, f"{name}:datatype".encode(), datatype.encode(),
                      f"{name}:shape".encode(), ",".join(str(d) for d in array.shape).encode()]
        return pairs
    values = {name: _jsonable(array) for name, array in outputs.items()}
    pairs += [b"outputs", json.dumps(values, ensure_ascii=False).encode()]
    return pairs


def _jsonable(array: np.ndarray):
    if array.dtype == object:
        return [_jsonable(v) for v in array] if array.ndim else _text(array.item())
    if array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    return array.tolist()


def _text(item) -> str:
    data = item if isinstance(item, bytes) else str(item).encode()
    return data.decode(errors="replace")


def dead_letter_fields(entry_id: str, fields: Mapping[bytes, bytes], reason: str) -> list[bytes]:
    pairs: list[bytes] = [b"id", entry_id.encode(), b"reason", reason.encode()]
    for key, value in fields.items():
        pairs += [b"entry:" + key, value]
    return pairs
