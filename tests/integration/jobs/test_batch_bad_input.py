"""`shunter batch` refuses bad input with a message naming it, a non-zero exit, and no output
that could pass for a finished job."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.integration.jobs.support import run_batch


@pytest.fixture
def good_input(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"IN": [1, 2, 3, 4]}) + "\n" for _ in range(10)))
    return path


def refused(done, code: int, message: str) -> None:
    assert done.returncode == code, f"exit {done.returncode}: {done.stderr}"
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("make_input", "extra", "message"),
    [
        (lambda p: p / "missing.parquet", [], "input file '{input}' does not exist"),
        (lambda p: p / "in.txt", [], "cannot tell the input format of '{input}' from its extension '.txt'"),
        (lambda p: p / "in.jsonl", ["--input-format", "xml"], "invalid choice: 'xml'"),
        (lambda p: p / "in.jsonl", ["--shard", "3/3"], "--shard 3/3: I must be in 0..N-1"),
        (lambda p: p / "cols.jsonl", [], "columns match no input: input 'IN' (FP32[4]) needs a column 'IN'"),
        (lambda p: p / "in.npy", [], "the .npy rows have shape [3], input 'IN' takes [4]"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(picky, tmp_path, good_input, make_input, extra, message):
    (tmp_path / "in.txt").write_text("IN\n1\n")
    (tmp_path / "cols.jsonl").write_text(json.dumps({"in": [1, 2, 3, 4], "x": 1}) + "\n")
    np.save(tmp_path / "in.npy", np.zeros((5, 3), dtype=np.float32))
    source = make_input(tmp_path)
    out = tmp_path / "out"
    done = run_batch("picky", "--input", str(source), "--output", str(out), "--target", picky.address, *extra)
    refused(done, 2, message.format(input=source))
    assert not (out / "_manifest.json").exists()


def test_an_existing_output_is_kept_and_needs_resume(picky, tmp_path, good_input):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("someone else's")
    done = run_batch("picky", "--input", str(good_input), "--output", str(out), "--target", picky.address)
    refused(done, 2, f"output '{out}' exists and is not an empty job directory; --resume continues")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_of_a_different_job_is_refused(picky, tmp_path, good_input):
    out = tmp_path / "out"
    assert run_batch("picky", "--input", str(good_input), "--output", str(out), "--target", picky.address,
                     "--json").returncode == 0
    done = run_batch("picky", "--input", str(good_input), "--output", str(out), "--target", picky.address,
                     "--resume", "--chunk-rows", "5")
    refused(done, 2, "was written by a different job (chunk_rows: 8192 → 5)")


@pytest.mark.parametrize(
    ("model", "target", "code", "message"),
    [
        ("nope", None, 1, "model 'nope'"),
        ("picky", "127.0.0.1:1", 1, "cannot connect to 127.0.0.1:1 within 1 s"),
    ],
)
def test_an_unknown_model_or_unreachable_target_fails_the_job(picky, tmp_path, good_input, model, target, code,
                                                              message):
    out = tmp_path / "out"
    done = run_batch(model, "--input", str(good_input), "--output", str(out), "--target", target or picky.address,
                     "--connect-timeout", "1")
    refused(done, code, message)
    assert not (out / "_manifest.json").exists()
