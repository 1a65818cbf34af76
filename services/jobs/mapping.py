"""Columns → model inputs, by name.

For an input named ``X`` with per-row shape ``S`` (the batch dimension excluded):

- a column named ``X`` holds the whole tensor of each row: a list (nested for rank > 1;
  parquet list or fixed-size list) or, when ``S`` has one element, a scalar;
- otherwise columns ``X.0``, ``X.1``, … ``X.{K-1}`` (K = the product of ``S``) are read as the
  tensor's elements in row-major order: a csv whose 64 pixel columns are ``input__0.0`` …
  ``input__0.63`` feeds an FP32[64] input;
- a BYTES input takes strings (UTF-8 encoded) or binary values: a text column ``TEXT``
  feeds a BYTES[1] input one string per row, a list of strings a BYTES[-1] or BYTES[k] input;
- a plain ``.npy`` array (rows along axis 0) feeds a model with a single input.

Columns that no input uses are ignored. An input that finds no column is an error naming
the input, the columns it looked for and the ones the file has. A row whose value does not
fit (wrong length, a null, a string for a number) is a bad row with that reason; the other
rows of its block go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.datatypes import NUMPY_DTYPES
from services.common.signature import Signature, TensorSpec
from services.jobs.readers import Block, InputError, NpyReader, Reader


@dataclass(frozen=True)
class Source:
    """Where one input's values come from: one whole-tensor column or K element columns."""

    spec: TensorSpec
    column: str | None = None
    elements: tuple[str, ...] = ()
    #: A plain npy array: the whole array is this input.
    array: bool = False


@dataclass
class Segment:
    """Valid rows that share their per-row shapes, so they can travel in one request."""

    rows: np.ndarray  # int64 row indexes
    inputs: dict[str, np.ndarray]


@dataclass
class Mapped:
    segments: list[Segment] = field(default_factory=list)
    #: row index → why the row cannot be sent.
    bad: dict[int, str] = field(default_factory=dict)


def _elements(spec: TensorSpec) -> int | None:
    if any(d == -1 for d in spec.shape):
        return None
    return int(np.prod(spec.shape)) if spec.shape else 1


def resolve(reader: Reader, signature: Signature) -> list[Source]:
    """Pick the column(s) of every input; raise InputError naming what is missing."""
    if isinstance(reader, NpyReader) and not reader.columns:
        if len(signature.inputs) != 1:
            names = ", ".join(s.name for s in signature.inputs)
            raise InputError(
                f"a plain .npy array feeds a model with one input; this model has {len(signature.inputs)} "
                f"({names}): use a structured array, parquet, csv or jsonl with a column per input"
            )
        spec = signature.inputs[0]
        row_shape = tuple(reader.array.shape[1:])
        if not _shape_fits(row_shape, spec.shape) and not (_elements(spec) == 1 and row_shape == ()):
            raise InputError(
                f"the .npy rows have shape {list(row_shape)}, input '{spec.name}' takes {list(spec.shape)}"
            )
        return [Source(spec, array=True)]
    available = set(reader.columns)
    sources: list[Source] = []
    missing: list[str] = []
    for spec in signature.inputs:
        if spec.name in available:
            sources.append(Source(spec, column=spec.name))
            continue
        count = _elements(spec)
        elements = tuple(f"{spec.name}.{i}" for i in range(count or 0))
        if elements and all(n in available for n in elements):
            sources.append(Source(spec, elements=elements))
            continue
        wanted = f"'{spec.name}'" + (f" or '{spec.name}.0' … '{spec.name}.{count - 1}'" if count else "")
        missing.append(f"input '{spec.name}' ({spec.datatype}{list(spec.shape)}) needs a column {wanted}")
    if missing:
        have = ", ".join(reader.columns) if reader.columns else "none"
        raise InputError("columns match no input: " + "; ".join(missing) + f" (the file has columns: {have})")
    return sources


def _shape_fits(shape: tuple[int, ...], spec_shape: tuple[int, ...]) -> bool:
    return len(shape) == len(spec_shape) and all(w in (-1, g) for g, w in zip(shape, spec_shape, strict=True))


def convert_value(value: Any, spec: TensorSpec) -> np.ndarray:
    """One row's value as an array of the input's per-row shape; ValueError says why not."""
    if value is None:
        raise ValueError("null value")
    if spec.datatype == "BYTES":
        array = np.asarray(_to_bytes(value), dtype=object)
    else:
        try:
            array = np.asarray(value)
        except ValueError as exc:  # ragged nesting
            raise ValueError(f"not a {spec.datatype} tensor: {exc}") from None
        if array.dtype.kind in "USO":
            raise ValueError(f"a string or mixed value where {spec.datatype} numbers are expected")
        try:
            array = array.astype(NUMPY_DTYPES[spec.datatype], copy=False)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ValueError(f"not {spec.datatype}: {exc}") from None
    if array.shape == () and (_elements(spec) == 1):
        array = array.reshape(spec.shape)
    if not _shape_fits(array.shape, spec.shape):
        raise ValueError(f"shape {list(array.shape)} does not fit {list(spec.shape)}")
    return array


def _to_bytes(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    if isinstance(value, list | tuple):
        return [_to_bytes(v) for v in value]
    raise ValueError(f"a {type(value).__name__} where text (BYTES) is expected")


def map_block(block: Block, sources: Sequence[Source]) -> Mapped:
    """Turn one block into segments of sendable rows and the rows that cannot be sent."""
    bad = dict(block.bad)
    per_input: dict[str, np.ndarray | list[np.ndarray | None]] = {}
    for source in sources:
        per_input[source.spec.name] = _column_values(block, source, bad)
    return _segments(block, per_input, bad)


def _column_values(block: Block, source: Source, bad: dict[int, str]) -> np.ndarray | list[np.ndarray | None]:
    """A dense (rows, *shape) array when the fast path applies, else one array (or None) per row."""
    spec = source.spec
    if source.array:
        data = np.asarray(block.data)
        if spec.datatype == "BYTES":
            return _convert_rows([v.tolist() for v in data], block, spec, bad)
        rows = data.astype(NUMPY_DTYPES[spec.datatype], copy=False)
        if rows.ndim == 1:  # one scalar per row, for an input of one element
            rows = rows.reshape(len(rows), *spec.shape)
        return rows
    if isinstance(block.data, list):  # jsonl objects
        values = [_json_row_value(obj, source) for obj in block.data]
        return _convert_rows(values, block, spec, bad, skip=block.bad)
    if isinstance(block.data, np.ndarray):  # structured npy
        values = (
            [block.data[source.column][i].tolist() for i in range(block.rows)]
            if source.column
            else [[block.data[c][i].item() for c in source.elements] for i in range(block.rows)]
        )
        return _convert_rows(values, block, spec, bad)
    return _arrow_values(block, source, bad)


def _json_row_value(obj: dict | None, source: Source) -> Any:
    if obj is None:
        return _Skip
    if source.column:
        return obj.get(source.column)
    values = [obj.get(c) for c in source.elements]
    return None if any(v is None for v in values) else values


class _Skip:
    """A row already known bad (undecodable)."""


def _convert_rows(
    values: list[Any], block: Block, spec: TensorSpec, bad: dict[int, str], skip: dict[int, str] | None = None
) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = []
    for offset, value in enumerate(values):
        index = block.start + offset
        if value is _Skip or (skip and index in skip):
            out.append(None)
            continue
        try:
            out.append(convert_value(value, spec))
        except ValueError as exc:
            bad.setdefault(index, f"input '{spec.name}': {exc}")
            out.append(None)
    return out


def _arrow_values(block: Block, source: Source, bad: dict[int, str]) -> np.ndarray | list[np.ndarray | None]:
    import pyarrow as pa
    import pyarrow.compute as pc

    spec = source.spec
    batch = block.data
    count = _elements(spec)
    if source.elements:
        columns = [batch.column(c) for c in source.elements]
        if spec.datatype != "BYTES" and all(pa.types.is_integer(c.type) or pa.types.is_floating(c.type)
                                            for c in columns) and not any(c.null_count for c in columns):
            stacked = np.stack([c.to_numpy(zero_copy_only=False) for c in columns], axis=1)
            return stacked.astype(NUMPY_DTYPES[spec.datatype], copy=False).reshape(block.rows, *spec.shape)
        rows = [list(row) for row in zip(*(c.to_pylist() for c in columns), strict=True)]
        values = [None if any(v is None for v in row) else row for row in rows]
        return _convert_rows(values, block, spec, bad)
    column = batch.column(source.column)
    kind = column.type
    numeric = spec.datatype not in ("BYTES",)
    if numeric and count is not None and column.null_count == 0:
        if (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)) and count == 1:
            values = column.to_numpy(zero_copy_only=False)
            return values.astype(NUMPY_DTYPES[spec.datatype], copy=False).reshape(block.rows, *spec.shape)
        if (pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind)) and (
            pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)
        ):
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            if len(lengths) and (lengths == count).all():
                flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
                return flat.astype(NUMPY_DTYPES[spec.datatype], copy=False).reshape(block.rows, *spec.shape)
    return _convert_rows(column.to_pylist(), block, spec, bad)


def _segments(block: Block, per_input: dict[str, Any], bad: dict[int, str]) -> Mapped:
    mapped = Mapped(bad=bad)
    if all(isinstance(v, np.ndarray) for v in per_input.values()):
        rows = np.arange(block.start, block.start + block.rows, dtype=np.int64)
        keep = np.array([int(r) not in bad for r in rows], dtype=bool) if bad else None
        if keep is None:
            mapped.segments.append(Segment(rows, dict(per_input)))
        elif keep.any():
            mapped.segments.append(Segment(rows[keep], {k: v[keep] for k, v in per_input.items()}))
        return mapped
    # Per-row values: consecutive good rows with equal shapes form one segment.
    current: list[int] = []
    current_key: tuple | None = None

    def flush() -> None:
        if not current:
            return
        offsets = [r - block.start for r in current]
        arrays = {}
        for name, values in per_input.items():
            if isinstance(values, np.ndarray):
                arrays[name] = values[offsets]
            else:
                arrays[name] = np.stack([values[o] for o in offsets])
        mapped.segments.append(Segment(np.asarray(current, dtype=np.int64), arrays))

    for offset in range(block.rows):
        index = block.start + offset
        if index in bad:
            continue
        key = tuple(
            (values[offset].shape if not isinstance(values, np.ndarray) else None) for values in per_input.values()
        )
        if current and key != current_key:
            flush()
            current = []
        current.append(index)
        current_key = key
    flush()
    return mapped
