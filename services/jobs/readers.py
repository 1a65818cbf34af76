"""Streaming readers for batch input: parquet, jsonl, csv and npy, never the whole file at once.

Each reader yields ``Block``s of consecutive rows, numbered from 0 over the whole file:
parquet by record batches (``pyarrow.parquet.ParquetFile.iter_batches``), csv through
pyarrow's streaming CSV reader, jsonl line by line, npy memory-mapped (``np.load(mmap_mode='r')``),
so a file larger than memory is fine. A block holds its columns in the reader's own form
(a pyarrow RecordBatch, a list of parsed JSON objects, a NumPy slice); ``services.jobs.mapping``
turns them into model inputs. A row that cannot be decoded at all (a jsonl line that is not a
JSON object) is reported in ``Block.bad`` and stays in the numbering.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INPUT_FORMATS = ("parquet", "jsonl", "npy", "csv")
_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".npy": "npy",
               ".csv": "csv"}


class InputError(Exception):
    """The input cannot be read as asked (missing, unknown format, unreadable); names the problem."""


@dataclass
class Block:
    """Rows ``start .. start + rows`` of the input."""

    start: int
    rows: int
    #: pyarrow.RecordBatch (parquet, csv), list of dicts (jsonl), np.ndarray (npy).
    data: Any
    #: row index → why it could not be decoded.
    bad: dict[int, str] = field(default_factory=dict)


def format_of(path: Path, given: str | None, known: tuple[str, ...], what: str) -> str:
    """The format named by ``--*-format`` or, failing that, by the file's extension."""
    if given:
        if given not in known:
            raise InputError(f"unknown {what} format '{given}' (one of {', '.join(known)})")
        return given
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None or found not in known:
        raise InputError(
            f"cannot tell the {what} format of '{path}' from its extension '{path.suffix}'; "
            f"give --{what}-format ({'|'.join(known)})"
        )
    return found


class Reader:
    """One input file: its column names, its row count when cheap to know, its blocks."""

    columns: list[str]
    num_rows: int | None
    #: parquet, jsonl, npy or csv.
    format: str

    def blocks(self, block_rows: int) -> Iterator[Block]:
        raise NotImplementedError


class ParquetReader(Reader):
    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        try:
            self._file = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for a file that is not parquet
            raise InputError(f"'{path}' is not a readable parquet file: {exc}") from None
        self.columns = list(self._file.schema_arrow.names)
        self.num_rows = self._file.metadata.num_rows

    def blocks(self, block_rows: int) -> Iterator[Block]:
        start = 0
        for batch in self._file.iter_batches(batch_size=block_rows):
            yield Block(start, batch.num_rows, batch)
            start += batch.num_rows


class CsvReader(Reader):
    def __init__(self, path: Path) -> None:
        self._path = path
        self.num_rows = None
        try:
            self.columns = list(self._open(1 << 16).schema.names)
        except Exception as exc:
            raise InputError(f"'{path}' is not a readable csv file: {exc}") from None

    def _open(self, block_size: int):
        import pyarrow.csv as pcsv

        return pcsv.open_csv(self._path, read_options=pcsv.ReadOptions(block_size=block_size))

    def blocks(self, block_rows: int) -> Iterator[Block]:
        import pyarrow as pa

        start = 0
        try:
            for batch in self._open(1 << 20):
                # CSV blocks are sized in bytes; re-cut them into rows for the caller.
                for offset in range(0, batch.num_rows, block_rows):
                    part = batch.slice(offset, block_rows)
                    yield Block(start, part.num_rows, part)
                    start += part.num_rows
        except pa.ArrowInvalid as exc:
            raise InputError(f"'{self._path}': csv row near {start} is malformed: {exc}") from None


class JsonlReader(Reader):
    def __init__(self, path: Path) -> None:
        self._path = path
        self.num_rows = None
        self.columns = []
        with path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    try:
                        first = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(first, dict):
                        self.columns = list(first)
                    break

    def blocks(self, block_rows: int) -> Iterator[Block]:
        start = 0
        rows: list[Any] = []
        bad: dict[int, str] = {}
        with self._path.open("rb") as handle:
            for line in handle:
                if not line.strip():
                    continue  # blank lines are not rows
                index = start + len(rows)
                try:
                    value = json.loads(line)
                    if not isinstance(value, dict):
                        raise ValueError(f"a JSON {type(value).__name__}, not an object")
                except ValueError as exc:
                    bad[index] = f"line is not a JSON object: {exc}"
                    value = None
                rows.append(value)
                if len(rows) == block_rows:
                    yield Block(start, len(rows), rows, bad)
                    start += len(rows)
                    rows, bad = [], {}
        if rows:
            yield Block(start, len(rows), rows, bad)


class NpyReader(Reader):
    """A plain array (rows along axis 0) feeds the model's one input; a structured one, by field name."""

    def __init__(self, path: Path) -> None:
        try:
            self._array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"'{path}' is not a readable .npy file: {exc}") from None
        if self._array.ndim == 0:
            raise InputError(f"'{path}' holds a scalar, not rows")
        self.num_rows = int(self._array.shape[0])
        self.columns = list(self._array.dtype.names or [])

    @property
    def array(self) -> np.ndarray:
        return self._array

    def blocks(self, block_rows: int) -> Iterator[Block]:
        for start in range(0, self.num_rows or 0, block_rows):
            part = self._array[start : start + block_rows]
            yield Block(start, len(part), part)


def open_reader(path: Path, fmt: str | None) -> Reader:
    path = Path(path)
    if not path.exists():
        raise InputError(f"input file '{path}' does not exist")
    if not path.is_file():
        raise InputError(f"input '{path}' is not a file")
    kind = format_of(path, fmt, INPUT_FORMATS, "input")
    reader = {"parquet": ParquetReader, "csv": CsvReader, "jsonl": JsonlReader, "npy": NpyReader}[kind](path)
    reader.format = kind
    return reader
