"""Reading a reference sample (npy, npz, parquet, jsonl) and checking it against a signature.

- ``.npy``: one array, rows first, for a model with one input;
- ``.npz``: one array per input, named as the inputs (extra arrays, e.g. ``label``, are ignored);
- ``.parquet``: one column per input; a cell is a scalar (shape [1]) or a list;
- ``.jsonl``: one object per line, ``{"input__0": [..64 numbers..]}``; texts as strings.

Each input's rows must have the signature's shape (-1 matches any length) and a dtype of
the signature's kind: floating for FP*, integer for INT*/UINT*, bool for BOOL, text or
bytes for BYTES. The width may differ (float64 data for an FP32 input is fine: binning
runs in float64 anyway); a kind mismatch (integers for FP32) is refused, since it usually
means the wrong file or column.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.monitoring.features import TensorLike


class ReferenceError(ValueError):
    """A reference file that cannot be used; the message names the file and the problem."""


_KINDS = {"FP16": "f", "FP32": "f", "FP64": "f", "BOOL": "b"}
_KIND_NAMES = {"f": "floating-point", "i": "integer", "b": "boolean", "O": "text/bytes"}


def _kind(datatype: str) -> str:
    if datatype in _KINDS:
        return _KINDS[datatype]
    if datatype.startswith(("INT", "UINT")):
        return "i"
    return "O"


def load_reference(path: Path, inputs: Sequence[TensorLike]) -> tuple[dict[str, np.ndarray], int]:
    """The named arrays of a reference file and its row count, checked against ``inputs``."""
    path = path.expanduser()
    if not path.is_file():
        raise ReferenceError(f"reference file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            if len(inputs) != 1:
                raise ReferenceError(
                    f"{path}: an .npy file holds one array but the model has {len(inputs)} inputs "
                    f"({', '.join(t.name for t in inputs)}); use .npz, parquet or jsonl with one entry per input"
                )
            arrays = {inputs[0].name: np.load(path, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {t.name: data[t.name] for t in inputs if t.name in data.files}
        elif suffix == ".parquet":
            arrays = _parquet(path, inputs)
        elif suffix in (".jsonl", ".ndjson"):
            arrays = _jsonl(path, inputs)
        else:
            raise ReferenceError(f"{path}: unknown reference format {suffix!r} (npy, npz, parquet or jsonl)")
    except ReferenceError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ReferenceError(f"{path}: cannot read it: {exc}") from None
    missing = [t.name for t in inputs if t.name not in arrays]
    if missing:
        raise ReferenceError(f"{path}: no data for input(s) {', '.join(missing)}")
    rows = None
    for spec in inputs:
        array = arrays[spec.name]
        want = tuple(spec.shape)
        if array.ndim == len(want) and want == (1,) and array.ndim == 1:
            array = arrays[spec.name] = array[:, None]
        got = array.shape[1:]
        if array.ndim != len(want) + 1 or any(w not in (-1, g) for w, g in zip(want, got, strict=True)):
            raise ReferenceError(
                f"{path}: input {spec.name!r} has rows of shape {list(got)}, but the signature says "
                f"{list(want)} (the file's array is {list(array.shape)}, rows first)"
            )
        kind = _kind(spec.datatype)
        have = "O" if array.dtype.kind in "OSU" else ("i" if array.dtype.kind in "iu" else array.dtype.kind)
        if have != kind:
            raise ReferenceError(
                f"{path}: input {spec.name!r} is {array.dtype} ({_KIND_NAMES.get(have, array.dtype.kind)}), but the "
                f"signature says {spec.datatype} ({_KIND_NAMES[kind]})"
            )
        if rows is not None and array.shape[0] != rows:
            raise ReferenceError(f"{path}: inputs have different row counts ({rows} and {array.shape[0]})")
        rows = array.shape[0]
    return arrays, int(rows or 0)


def _parquet(path: Path, inputs: Sequence[TensorLike]) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    arrays = {}
    for spec in inputs:
        if spec.name not in table.column_names:
            continue
        column = table.column(spec.name).combine_chunks()
        import pyarrow as pa

        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(
            column.type
        ):
            values = column.flatten().to_numpy(zero_copy_only=False)
            width = len(values) // max(len(column), 1)
            arrays[spec.name] = values.reshape(len(column), width) if len(column) else values
        else:
            arrays[spec.name] = column.to_numpy(zero_copy_only=False)
    return arrays


def _jsonl(path: Path, inputs: Sequence[TensorLike]) -> dict[str, np.ndarray]:
    columns: dict[str, list] = {t.name: [] for t in inputs}
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ReferenceError(f"{path}:{number}: not JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise ReferenceError(f"{path}:{number}: expected an object with one key per input")
            for name, values in columns.items():
                if name not in record:
                    raise ReferenceError(f"{path}:{number}: no value for input {name!r}")
                values.append(record[name])
    arrays = {}
    for spec in inputs:
        values = columns[spec.name]
        if _kind(spec.datatype) == "O":
            flat = [v if isinstance(v, list) else [v] for v in values]
            arrays[spec.name] = np.array(flat, dtype=object)
        else:
            try:
                arrays[spec.name] = np.array(values)
            except ValueError:
                raise ReferenceError(f"{path}: input {spec.name!r} has rows of different lengths") from None
            if arrays[spec.name].dtype.kind == "i" and _kind(spec.datatype) == "f":
                arrays[spec.name] = arrays[spec.name].astype(np.float64)  # JSON writes 3.0 as 3
    return arrays
