"""The evaluation set: inputs shaped like the model's signature, and optional labels.

Formats, read without unpickling anything:

- ``.npz``: one array per model input, named like the input; a labels array may sit beside
  them (``--label-column NAME`` picks it).
- ``.npy``: the one input of a single-input model.
- ``.jsonl``: one JSON object per row, ``{"<input>": value, ...}``; strings for BYTES
  inputs (MiniLM's ``TEXT``), nested lists for numeric ones; ``--label-column`` names a key.

``--labels FILE`` (``.npy`` or one label per line of text) gives labels separately. Every
check names the file, the input and what was expected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.datatypes import NUMPY_DTYPES
from services.common.model_config import ModelConfig, TensorConfig
from services.optimize.errors import OptimizeError


@dataclass(frozen=True)
class EvalSet:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))

    def slice(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {name: array[start:stop] for name, array in self.inputs.items()}


def load_evalset(
    path: Path, config: ModelConfig, labels_path: Path | None = None, label_column: str | None = None
) -> EvalSet:
    """Read and check ``path`` (and labels) against ``config``'s inputs."""
    if labels_path is not None and label_column is not None:
        raise OptimizeError("give either --labels FILE or --label-column NAME, not both")
    if not path.is_file():
        raise OptimizeError(f"eval file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        columns = _read_npz(path)
    elif suffix == ".npy":
        if len(config.inputs) != 1:
            names = ", ".join(t.name for t in config.inputs)
            raise OptimizeError(f"eval file {path}: a .npy holds one input but the model takes {names}; use .npz")
        columns = {config.inputs[0].name: _read_npy(path)}
    elif suffix == ".jsonl":
        columns = _read_jsonl(path, config.inputs, label_column)
    else:
        raise OptimizeError(f"eval file {path}: unsupported format {suffix!r} (.npz, .npy or .jsonl)")

    labels = None
    if label_column is not None:
        if label_column not in columns:
            have = ", ".join(sorted(columns))
            raise OptimizeError(f"eval file {path}: no label column {label_column!r} (has {have})")
        labels = np.asarray(columns.pop(label_column))
    elif labels_path is not None:
        labels = _read_labels(labels_path)

    inputs = {spec.name: _check_input(path, spec, columns, config) for spec in config.inputs}
    extra = sorted(set(columns) - set(inputs))
    if extra:
        raise OptimizeError(
            f"eval file {path}: unknown array(s) {', '.join(extra)}; the model's inputs are "
            f"{', '.join(inputs)} (name labels with --label-column)"
        )
    rows = {name: len(array) for name, array in inputs.items()}
    if len(set(rows.values())) != 1:
        raise OptimizeError(f"eval file {path}: inputs disagree on the number of rows: {rows}")
    count = next(iter(rows.values()))
    if count == 0:
        raise OptimizeError(f"eval file {path}: no rows")
    if labels is not None and len(labels) != count:
        where = labels_path or f"column {label_column!r}"
        raise OptimizeError(f"labels {where}: {len(labels)} labels for {count} eval rows")
    return EvalSet(inputs, labels, str(path))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise OptimizeError(f"eval file {path}: cannot read .npz: {exc}") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise OptimizeError(f"{path}: cannot read .npy: {exc}") from None


def _read_jsonl(path: Path, specs: list[TensorConfig], label_column: str | None) -> dict[str, np.ndarray]:
    wanted = [s.name for s in specs] + ([label_column] if label_column else [])
    values: dict[str, list] = {name: [] for name in wanted}
    with path.open() as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OptimizeError(f"eval file {path} line {number}: not JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise OptimizeError(f"eval file {path} line {number}: expected an object")
            for name in wanted:
                if name not in row:
                    raise OptimizeError(f"eval file {path} line {number}: no {name!r}")
                values[name].append(row[name])
    columns: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.datatype == "BYTES":
            items = [v.encode() if isinstance(v, str) else v for v in values[spec.name]]
            if not all(isinstance(v, bytes) for v in items):
                raise OptimizeError(f"eval file {path}: input {spec.name} is BYTES; give strings")
            array = np.empty((len(items), *[1 for _ in spec.shape]), dtype=object)
            array.reshape(len(items))[:] = items
            columns[spec.name] = array
        else:
            try:
                columns[spec.name] = np.asarray(values[spec.name])
            except ValueError as exc:
                raise OptimizeError(f"eval file {path}: input {spec.name}: ragged rows ({exc})") from None
    if label_column:
        columns[label_column] = np.asarray(values[label_column])
    return columns


def _read_labels(path: Path) -> np.ndarray:
    if not path.is_file():
        raise OptimizeError(f"labels file {path} does not exist")
    if path.suffix.lower() == ".npy":
        return _read_npy(path)
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    try:
        return np.asarray([int(v) for v in lines])
    except ValueError:
        try:
            return np.asarray([float(v) for v in lines])
        except ValueError:
            raise OptimizeError(f"labels file {path}: expected one number per line") from None


def _check_input(path: Path, spec: TensorConfig, columns: dict[str, np.ndarray], config: ModelConfig) -> np.ndarray:
    if spec.name not in columns:
        raise OptimizeError(
            f"eval file {path}: no input {spec.name!r} (has {', '.join(sorted(columns)) or 'nothing'})"
        )
    array = columns[spec.name]
    want = np.dtype(NUMPY_DTYPES[spec.datatype])
    if spec.datatype == "BYTES":
        if array.dtype != object:
            raise OptimizeError(f"eval file {path}: input {spec.name} is BYTES, got dtype {array.dtype}")
    elif array.dtype != want:
        same_kind = np.can_cast(array.dtype, want, casting="same_kind") and array.dtype.kind == want.kind
        if not same_kind:
            raise OptimizeError(
                f"eval file {path}: input {spec.name} has dtype {array.dtype}, the model takes {spec.datatype}"
            )
        array = array.astype(want)
    batched = config.max_batch_size > 0
    dims = list(array.shape[1:] if batched else array.shape)
    expected = list(spec.shape)
    fits = len(dims) == len(expected) and all(e in (-1, d) for d, e in zip(dims, expected, strict=True))
    if not fits:
        raise OptimizeError(
            f"eval file {path}: input {spec.name} has rows of shape {dims}, the model takes {expected}"
        )
    return array
