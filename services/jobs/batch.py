"""``shunter batch``: stream a file through a model, in order, resumable, bad rows set aside.

The pipeline, one asyncio loop::

    reader (thread) → chunks of chunk_rows rows → requests of rows_per_request rows
        → up to `concurrency` ModelInfer calls in flight → chunk results → commit in order

Reading and mapping run in a thread (they block on disk and NumPy), as do commits (fsync).
At most ``window`` chunks are read ahead of the oldest uncommitted one, so memory stays
bounded whatever the file's size. A request the server rejects as a whole
(INVALID_ARGUMENT and friends) is split in halves until the bad rows are alone, so one bad
row costs its neighbours nothing; those rows go to the errors file. Chunk ``k`` belongs to
shard ``k % N``: shards are fixed by row numbers, so N jobs with ``--shard 0/N`` … ``N-1/N``
cover the input exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.common.datatypes import NUMPY_DTYPES
from services.common.signature import Signature
from services.common.tls import ClientTls
from services.jobs.infer import InferClient, JobFailed, RowsRejected
from services.jobs.mapping import Mapped, Segment, map_block, resolve
from services.jobs.output import OUTPUT_FORMATS, ChunkResult, OutputDir, errors_path
from services.jobs.readers import InputError, open_reader
from services.jobs.retry import RetryPolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOptions:
    model: str
    input: Path
    output: Path
    target: str
    api_key: str | None = None
    #: TLS to the target (--tls-ca); None: plaintext.
    tls: ClientTls | None = None
    version: str = ""
    input_format: str | None = None
    output_format: str | None = None
    rows_per_request: int = 64
    concurrency: int = 8
    resume: bool = False
    shard: tuple[int, int] = (0, 1)
    max_errors: int | None = None
    chunk_rows: int = 8192
    timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)


class TooManyErrors(Exception):
    """More bad rows than ``--max-errors`` allows."""


@dataclass
class Progress:
    """What the progress bar and the summary show; updated on the event loop."""

    total: int | None = None
    done: int = 0
    errors: int = 0
    skipped: int = 0


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` → (I, N), with 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes I/N (for example 0/4), got '{text}'") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text}: I must be in 0..N-1 and N >= 1")
    return index, count


@dataclass
class _Chunk:
    index: int
    first_row: int
    rows: int
    mapped: Mapped


def _chunks(reader, sources, opts: BatchOptions, skip: set[int]) -> Iterator[_Chunk]:
    """This shard's chunks, in order, skipping committed ones without mapping them."""
    size = opts.chunk_rows
    shard, shards = opts.shard
    wanted = lambda k: k % shards == shard and k not in skip  # noqa: E731
    pending: dict[int, _Chunk] = {}
    for block in reader.blocks(min(size, 65536)):
        end = block.start + block.rows
        first, last = block.start // size, (end - 1) // size
        if any(wanted(k) for k in range(first, last + 1)):
            mapped = map_block(block, sources)
            for k in range(first, last + 1):
                if wanted(k):
                    lo, hi = max(k * size, block.start), min((k + 1) * size, end)
                    chunk = pending.setdefault(k, _Chunk(k, k * size, 0, Mapped()))
                    chunk.rows += hi - lo
                    _take(mapped, lo, hi, chunk.mapped)
        for k in sorted(pending):
            if (k + 1) * size <= end:
                yield pending.pop(k)
    for k in sorted(pending):
        yield pending.pop(k)


def _take(mapped: Mapped, lo: int, hi: int, into: Mapped) -> None:
    """Move rows [lo, hi) of ``mapped`` into ``into``."""
    for segment in mapped.segments:
        keep = (segment.rows >= lo) & (segment.rows < hi)
        if keep.all():
            into.segments.append(segment)
        elif keep.any():
            into.segments.append(Segment(segment.rows[keep], {k: v[keep] for k, v in segment.inputs.items()}))
    into.bad.update({row: why for row, why in mapped.bad.items() if lo <= row < hi})


def _total_rows(num_rows: int | None, opts: BatchOptions) -> int | None:
    if num_rows is None:
        return None
    size, (shard, shards) = opts.chunk_rows, opts.shard
    chunks = -(-num_rows // size)
    return sum(min(size, num_rows - k * size) for k in range(shard, chunks, shards))


def job_identity(opts: BatchOptions, input_format: str, output_format: str) -> dict[str, Any]:
    """What a resumed job must share with the one that wrote the output (the manifest's "job")."""
    stat = opts.input.stat()
    return {
        "model": opts.model, "version": opts.version, "input": opts.input.name, "input_bytes": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns, "input_format": input_format, "output_format": output_format,
        "chunk_rows": opts.chunk_rows, "shard": f"{opts.shard[0]}/{opts.shard[1]}",
    }


async def run_batch(opts: BatchOptions, progress: Progress | None = None,
                    on_update: Callable[[Progress], None] | None = None) -> dict[str, Any]:
    """Run (or resume) one job; returns the summary. Raises InputError, OutputError, JobFailed, TooManyErrors."""
    progress = progress or Progress()
    started = time.monotonic()
    reader = open_reader(opts.input, opts.input_format)
    output_format = opts.output_format or _output_format_from(opts.output)
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"unknown output format '{output_format}' (one of {', '.join(OUTPUT_FORMATS)})")
    async with InferClient(opts.target, opts.model, version=opts.version, api_key=opts.api_key, tls=opts.tls,
                           timeout_s=opts.timeout_s, policy=opts.policy) as client:
        signature = await client.describe(opts.connect_timeout_s)
        sources = resolve(reader, signature)
        out = OutputDir(opts.output, output_format, job_identity(opts, reader.format, output_format),
                        resume=opts.resume)
        progress.total = _total_rows(reader.num_rows, opts)
        progress.skipped = out.manifest["rows"]
        progress.done = out.manifest["rows"]
        progress.errors = out.manifest["errors"]
        if not out.complete:
            per_request = opts.rows_per_request
            if signature.batched:
                per_request = min(per_request, signature.max_batch_size)
            runner = _Runner(client, opts, out, progress, on_update, max(1, per_request), signature)
            await runner.run(_chunks(reader, sources, opts, out.committed))
            out.finish()
        elapsed = time.monotonic() - started
        processed = out.manifest["rows"] - progress.skipped
        return {
            "model": opts.model, "output": str(opts.output), "errors_file": str(errors_path(opts.output)),
            "rows": out.manifest["rows"], "written": out.manifest["written"], "errors": out.manifest["errors"],
            "resumed_rows": progress.skipped, "seconds": round(elapsed, 3),
            "rows_per_s": round(processed / elapsed, 1) if elapsed > 0 else 0.0,
            "retries": client.retries, "rate_limited_waits": client.rate_limited,
            "chunks": len(out.manifest["chunks"]), "complete": out.complete,
        }


def _output_format_from(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("parquet", "jsonl", "npy"):
        return suffix
    return "parquet"


class _Runner:
    def __init__(self, client: InferClient, opts: BatchOptions, out: OutputDir, progress: Progress,
                 on_update: Callable[[Progress], None] | None, per_request: int, signature: Signature) -> None:
        self.client = client
        self.opts = opts
        self.out = out
        self.progress = progress
        self.on_update = on_update or (lambda p: None)
        self.per_request = per_request if signature.batched else 1
        #: Empty outputs for a chunk whose every row is bad, so each chunk has every column.
        self.empty = {
            spec.name: np.zeros((0, *[max(d, 0) for d in spec.shape]), dtype=NUMPY_DTYPES[spec.datatype])
            for spec in signature.outputs
        }
        self.calls = asyncio.Semaphore(max(1, opts.concurrency))
        self.lanes = Lanes()
        # Enough chunks ahead to keep every call slot busy, two at least.
        self.window = max(2, -(-opts.concurrency * self.per_request // opts.chunk_rows) + 1)

    async def run(self, chunks: Iterator[_Chunk]) -> None:
        in_flight: list[asyncio.Task[ChunkResult]] = []
        done_reading = False
        sentinel = object()
        try:
            while True:
                while not done_reading and len(in_flight) < self.window:
                    chunk = await asyncio.to_thread(next, chunks, sentinel)
                    if not isinstance(chunk, _Chunk):
                        done_reading = True
                        break
                    in_flight.append(asyncio.create_task(self._infer_chunk(chunk)))
                if not in_flight:
                    return
                result = await in_flight.pop(0)
                await asyncio.to_thread(self.out.commit, result)
                if self.opts.max_errors is not None and self.out.manifest["errors"] > self.opts.max_errors:
                    raise TooManyErrors(
                        f"{self.out.manifest['errors']} bad rows exceed --max-errors {self.opts.max_errors} "
                        f"(see {self.out.errors_file})"
                    )
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _infer_chunk(self, chunk: _Chunk) -> ChunkResult:
        errors: dict[int, tuple[str, str]] = {
            row: ("INVALID_ARGUMENT", why) for row, why in chunk.mapped.bad.items()
        }
        if errors:
            self._count(0, len(errors))
        pieces: list[tuple[np.ndarray, Any]] = []
        for segment in chunk.mapped.segments:
            for lo in range(0, len(segment.rows), self.per_request):
                rows = segment.rows[lo : lo + self.per_request]
                inputs = {k: v[lo : lo + self.per_request] for k, v in segment.inputs.items()}
                pieces.append((rows, asyncio.ensure_future(self._infer_rows(rows, inputs, errors))))
        try:
            results = [(rows, await task) for rows, task in pieces]
        except BaseException:
            for _, task in pieces:
                task.cancel()
            raise
        kept_rows: list[np.ndarray] = []
        outputs: dict[str, list[np.ndarray]] = {}
        for _rows, parts in results:
            for part_rows, arrays in parts:
                kept_rows.append(part_rows)
                for name, array in arrays.items():
                    outputs.setdefault(name, []).append(array)
        row_ids = np.concatenate(kept_rows) if kept_rows else np.zeros(0, dtype=np.int64)
        return ChunkResult(
            index=chunk.index, first_row=chunk.first_row, rows=chunk.rows, row_ids=row_ids,
            outputs={name: _concat(arrays) for name, arrays in outputs.items()} or dict(self.empty),
            errors=sorted((row, code, message) for row, (code, message) in errors.items()),
        )

    async def _infer_rows(self, rows: np.ndarray, inputs: dict[str, np.ndarray],
                          errors: dict[int, tuple[str, str]]) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Results for these rows, in order; rows the server rejects are isolated by halving.

        A worker batches concurrent requests together, and a batch fails as a whole, so a
        rejection in the shared lane may be a neighbour's fault: the rows are tried again in the
        exclusive lane (no other call of this job in flight) before they are blamed or halved.
        """
        try:
            async with self.calls:
                async with self.lanes.shared():
                    result = await self.client.infer(inputs)
        except RowsRejected:
            return await self._isolate(rows, inputs, errors)
        self._count(len(rows), 0)
        return [(rows, result)]

    async def _isolate(self, rows: np.ndarray, inputs: dict[str, np.ndarray],
                       errors: dict[int, tuple[str, str]]) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        try:
            async with self.lanes.exclusive():
                result = await self.client.infer(inputs)
        except RowsRejected as exc:
            if len(rows) == 1:
                errors[int(rows[0])] = (exc.code, exc.message)
                self._count(0, 1)
                return []
            half = len(rows) // 2
            first = await self._isolate(rows[:half], {k: v[:half] for k, v in inputs.items()}, errors)
            second = await self._isolate(rows[half:], {k: v[half:] for k, v in inputs.items()}, errors)
            return first + second
        self._count(len(rows), 0)
        return [(rows, result)]

    def _count(self, done: int, errors: int) -> None:
        self.progress.done += done + errors
        self.progress.errors += errors
        self.on_update(self.progress)


class Lanes:
    """A readers-writer lock for calls: many shared calls, or one exclusive call alone.

    A waiting exclusive caller stops new shared calls, so isolation never starves.
    """

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            async with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            self._waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._exclusive and not self._shared)
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            async with self._cond:
                self._exclusive = False
                self._cond.notify_all()


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    if len(arrays) == 1:
        return arrays[0]
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:  # a -1 output dimension that differs between requests: pad is wrong, keep objects
        out = np.empty(sum(len(a) for a in arrays), dtype=object)
        out[:] = [row for a in arrays for row in a]
        return out
    return np.concatenate(arrays)


def default_target() -> str | None:
    return os.environ.get("SHUNTER_ROUTER")


__all__ = ["BatchOptions", "InputError", "JobFailed", "Progress", "TooManyErrors", "parse_shard", "run_batch"]
