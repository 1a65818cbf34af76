"""Batch output as atomically committed chunks with a manifest, so a killed job resumes exactly.

``--output PATH`` is a directory::

    PATH/_manifest.json        what is committed: the job's identity, every chunk, complete or not
    PATH/part-000000.parquet   rows 0 .. chunk_rows-1 (less the bad ones), with their row index
    PATH/part-000001.parquet   …
    PATH.errors.jsonl          bad rows: {"row": i, "code": "INVALID_ARGUMENT", "message": "..."}

Chunk ``k`` holds input rows ``[k*chunk_rows, (k+1)*chunk_rows)``, fixed by the row numbers and
never by timing, and chunks are committed in order. One commit: append the chunk's errors to
the errors file and fsync it; write each data file under a temporary name, fsync, rename;
then write the manifest the same way. The manifest's rename is the commit point: it records
the chunk's files and the errors file's length. A job killed at any moment leaves at most one
uncommitted chunk's leftovers, which ``--resume`` removes (temporary and unlisted files; the
errors file cut back to its recorded length) before going on from the next chunk. Every file
is written deterministically, so a resumed job's output equals an uninterrupted run's byte
for byte. Until the last chunk the manifest says ``"complete": false``: a reader can tell
partial output from finished output.

Formats, per output tensor ``Y`` of per-row shape ``S``: parquet has an int64 ``row`` column and
``Y`` as a scalar column (one element) or a fixed-size list of the row-major elements (BYTES as
binary); jsonl has one object per row, ``{"row": i, "Y": nested list}`` (BYTES as UTF-8 text, or
``{"base64": ...}`` when not UTF-8); npy has ``part-K.row.npy`` and ``part-K.Y.npy`` per chunk.
``read_output`` reads any of them back in row order.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OUTPUT_FORMATS = ("parquet", "jsonl", "npy")
MANIFEST = "_manifest.json"
MANIFEST_FORMAT = "shunter-batch/1"


class OutputError(Exception):
    """The output directory cannot be used as asked; the message says why and what to do."""


@dataclass
class ChunkResult:
    """One chunk's outcome: its rows in order, their outputs, the bad rows."""

    index: int
    first_row: int
    #: Input rows of the chunk (bad ones included).
    rows: int
    row_ids: np.ndarray
    outputs: dict[str, np.ndarray]
    #: (row, code, message), in row order.
    errors: list[tuple[int, str, str]] = field(default_factory=list)


def errors_path(output: Path) -> Path:
    return output.with_name(output.name + ".errors.jsonl")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class OutputDir:
    """The manifest and chunk files of one job's output; commits chunks one at a time, in order."""

    def __init__(self, path: Path, fmt: str, job: Mapping[str, Any], *, resume: bool) -> None:
        self.path = Path(path)
        self.format = fmt
        self.job = dict(job)
        self.errors_file = errors_path(self.path)
        manifest_path = self.path / MANIFEST
        if resume and manifest_path.exists():
            self.manifest = self._load(manifest_path)
            self._clean()
        else:
            if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
                hint = "" if resume else "; --resume continues a job from its manifest"
                raise OutputError(f"output '{self.path}' exists and is not an empty job directory{hint}")
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create output directory '{self.path}': {exc.strerror}") from None
            self.manifest = {"format": MANIFEST_FORMAT, "job": self.job, "chunks": [], "errors_bytes": 0,
                             "rows": 0, "written": 0, "errors": 0, "complete": False}
            self.errors_file.write_bytes(b"")
            self._write_manifest()

    # -- resume -------------------------------------------------------------------------------
    def _load(self, manifest_path: Path) -> dict[str, Any]:
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError as exc:
            raise OutputError(f"'{manifest_path}' is not a readable manifest: {exc}") from None
        if manifest.get("format") != MANIFEST_FORMAT:
            raise OutputError(f"'{manifest_path}' is not a shunter batch manifest")
        if manifest.get("job") != self.job:
            old, new = manifest.get("job", {}), self.job
            diff = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new))
                             if old.get(k) != new.get(k))
            raise OutputError(f"--resume: '{self.path}' was written by a different job ({diff})")
        return manifest

    def _clean(self) -> None:
        """Drop what an interrupted commit left: unlisted files, errors past the recorded length."""
        listed = {MANIFEST} | {f["name"] for chunk in self.manifest["chunks"] for f in chunk["files"]}
        for entry in self.path.iterdir():
            if entry.name not in listed:
                entry.unlink()
        for chunk in self.manifest["chunks"]:
            for f in chunk["files"]:
                file = self.path / f["name"]
                if not file.exists() or file.stat().st_size != f["bytes"]:
                    raise OutputError(f"--resume: committed chunk file '{file}' is missing or changed")
        recorded = self.manifest["errors_bytes"]
        if not self.errors_file.exists() or self.errors_file.stat().st_size < recorded:
            raise OutputError(f"--resume: '{self.errors_file}' is shorter than the manifest records")
        with self.errors_file.open("r+b") as handle:
            handle.truncate(recorded)
            os.fsync(handle.fileno())

    @property
    def committed(self) -> set[int]:
        return {chunk["index"] for chunk in self.manifest["chunks"]}

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    # -- commit -------------------------------------------------------------------------------
    def commit(self, chunk: ChunkResult) -> None:
        """Commit one chunk (errors, data files, then the manifest: the commit point)."""
        if chunk.errors:
            lines = b"".join(
                json.dumps({"row": row, "code": code, "message": message}, ensure_ascii=False).encode() + b"\n"
                for row, code, message in chunk.errors
            )
            with self.errors_file.open("ab") as handle:
                handle.write(lines)
                handle.flush()
                os.fsync(handle.fileno())
        files = []
        for name, data in encode_chunk(self.format, chunk).items():
            _write_atomic(self.path / name, data)
            files.append({"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        _fsync_dir(self.path)
        self.manifest["chunks"].append({
            "index": chunk.index, "first_row": chunk.first_row, "rows": chunk.rows,
            "written": len(chunk.row_ids), "errors": len(chunk.errors), "files": files,
        })
        self.manifest["errors_bytes"] = self.errors_file.stat().st_size
        self.manifest["rows"] += chunk.rows
        self.manifest["written"] += len(chunk.row_ids)
        self.manifest["errors"] += len(chunk.errors)
        self._write_manifest()

    def finish(self) -> None:
        self.manifest["complete"] = True
        self._write_manifest()

    def _write_manifest(self) -> None:
        _write_atomic(self.path / MANIFEST, (json.dumps(self.manifest, indent=1, sort_keys=True) + "\n").encode())
        _fsync_dir(self.path)


# -- encoding ---------------------------------------------------------------------------------
def encode_chunk(fmt: str, chunk: ChunkResult) -> dict[str, bytes]:
    stem = f"part-{chunk.index:06d}"
    if fmt == "parquet":
        return {f"{stem}.parquet": _parquet_bytes(chunk)}
    if fmt == "jsonl":
        return {f"{stem}.jsonl": _jsonl_bytes(chunk)}
    if fmt == "npy":
        files = {f"{stem}.row.npy": _npy_bytes(chunk.row_ids.astype(np.int64))}
        for name, array in chunk.outputs.items():
            files[f"{stem}.{_safe(name)}.npy"] = _npy_bytes(np.asarray(array))
        return files
    raise OutputError(f"unknown output format '{fmt}' (one of {', '.join(OUTPUT_FORMATS)})")


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype == object)
    return buffer.getvalue()


def _parquet_bytes(chunk: ChunkResult) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"row": pa.array(chunk.row_ids.astype(np.int64))}
    metadata = {}
    for name, array in chunk.outputs.items():
        array = np.asarray(array)
        rows = array.shape[0] if array.ndim else 0
        per_row = array.shape[1:]
        metadata[f"shunter.shape.{name}"] = json.dumps(list(per_row))
        flat = array.reshape(rows, -1)
        if array.dtype == object:
            values = pa.array([bytes(v) for v in flat.reshape(-1)], type=pa.binary())
        else:
            if array.dtype.name == "bfloat16":
                flat = flat.astype(np.float32)
            values = pa.array(flat.reshape(-1))
        width = flat.shape[1] if flat.ndim == 2 else 1
        if width == 1 and len(per_row) <= 1:
            columns[name] = values
        else:
            columns[name] = pa.FixedSizeListArray.from_arrays(values, width)
    table = pa.table(columns).replace_schema_metadata(metadata)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _json_value(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [_json_value(v) for v in array] if array.ndim else _text(array.item())
    if array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    return array.tolist()


def _text(item: Any) -> Any:
    data = item if isinstance(item, bytes) else str(item).encode()
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def _jsonl_bytes(chunk: ChunkResult) -> bytes:
    lines = []
    for offset, row in enumerate(chunk.row_ids.tolist()):
        record = {"row": row}
        for name, array in chunk.outputs.items():
            record[name] = _json_value(np.asarray(array)[offset])
        lines.append(json.dumps(record, ensure_ascii=False, allow_nan=True))
    return ("\n".join(lines) + "\n").encode() if lines else b""


# -- reading back -----------------------------------------------------------------------------
def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / MANIFEST).read_text())


def read_output(path: Path, *, allow_partial: bool = False) -> dict[str, np.ndarray]:
    """Every committed row in order: ``{"row": int64[n], OUTPUT: array[n, *S]}``."""
    path = Path(path)
    manifest = read_manifest(path)
    if not manifest["complete"] and not allow_partial:
        raise OutputError(f"'{path}' is incomplete (the job has not finished; --resume it)")
    fmt = manifest["job"]["output_format"]
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in manifest["chunks"]:
        for name, array in _read_chunk(path, fmt, chunk).items():
            parts.setdefault(name, []).append(array)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def _read_chunk(path: Path, fmt: str, chunk: dict[str, Any]) -> dict[str, np.ndarray]:
    files = [path / f["name"] for f in chunk["files"]]
    if fmt == "npy":
        out = {}
        for file in files:
            name = file.name.split(".", 1)[1][: -len(".npy")]
            out[name] = np.load(file, allow_pickle=True)
        return out
    if fmt == "jsonl":
        records = [json.loads(line) for line in files[0].read_text().splitlines() if line]
        if not records:
            return {}
        return {key: np.array([r[key] for r in records]) for key in records[0]}
    import pyarrow.parquet as pq

    table = pq.read_table(files[0])
    out = {}
    shapes = {k.decode(): json.loads(v) for k, v in (table.schema.metadata or {}).items() if k.startswith(b"shunter")}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        shape = shapes.get(f"shunter.shape.{name}", [])
        if hasattr(column, "flatten") and column.type.num_fields == 1:
            values = column.flatten().to_numpy(zero_copy_only=False)
        else:
            values = column.to_numpy(zero_copy_only=False)
        out[name] = values.reshape(len(column), *shape) if name != "row" else values
    return out
