"""Chunked output: atomic commits, resume cleans what an interrupted commit left, formats read back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.jobs.output import MANIFEST, ChunkResult, OutputDir, OutputError, encode_chunk, read_output

JOB = {"model": "m", "chunk_rows": 4}


def chunk(index: int, bad: tuple[int, ...] = ()) -> ChunkResult:
    rows = [r for r in range(index * 4, index * 4 + 4) if r not in bad]
    return ChunkResult(index=index, first_row=index * 4, rows=4, row_ids=np.array(rows, dtype=np.int64),
                       outputs={"Y": np.array([[r, r * 2] for r in rows], dtype=np.float32).reshape(-1, 2)},
                       errors=[(r, "INVALID_ARGUMENT", f"row {r} is bad") for r in bad])


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "npy"])
def test_committed_chunks_read_back_in_order(tmp_path, fmt):
    out = OutputDir(tmp_path / "out", fmt, {**JOB, "output_format": fmt}, resume=False)
    out.commit(chunk(0))
    out.commit(chunk(1, bad=(5,)))
    with pytest.raises(OutputError, match="incomplete"):
        read_output(tmp_path / "out")
    out.finish()
    result = read_output(tmp_path / "out")
    assert result["row"].tolist() == [0, 1, 2, 3, 4, 6, 7]
    np.testing.assert_array_equal(result["Y"][:, 1], result["row"] * 2)
    errors = (tmp_path / "out.errors.jsonl").read_text().splitlines()
    assert [json.loads(e)["row"] for e in errors] == [5]


def test_encoding_is_deterministic():
    for fmt in ("parquet", "jsonl", "npy"):
        assert encode_chunk(fmt, chunk(2, bad=(9,))) == encode_chunk(fmt, chunk(2, bad=(9,)))


def test_resume_drops_an_interrupted_commit_and_refuses_another_job(tmp_path):
    job = {**JOB, "output_format": "jsonl"}
    out = OutputDir(tmp_path / "out", "jsonl", job, resume=False)
    out.commit(chunk(0, bad=(1,)))
    # A commit killed after its errors and data file but before the manifest.
    with (tmp_path / "out.errors.jsonl").open("a") as handle:
        handle.write('{"row": 6}\n')
    (tmp_path / "out" / "part-000001.jsonl").write_text("half")
    (tmp_path / "out" / ".part-000002.jsonl.tmp").write_text("partial")
    resumed = OutputDir(tmp_path / "out", "jsonl", job, resume=True)
    assert resumed.committed == {0}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST, "part-000000.jsonl"]
    assert (tmp_path / "out.errors.jsonl").read_text().count("\n") == 1
    with pytest.raises(OutputError, match=r"different job \(chunk_rows: 4 → 8"):
        OutputDir(tmp_path / "out", "jsonl", {**job, "chunk_rows": 8}, resume=True)


def test_an_existing_output_is_not_overwritten_without_resume(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="exists and is not an empty job directory; --resume"):
        OutputDir(tmp_path / "out", "jsonl", JOB, resume=False)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
