"""`shunter batch` against real processes: formats, order, resume after SIGKILL, bad rows,
retries through a killed worker, a rate-limited key, shards."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from services.jobs.output import read_manifest, read_output
from tests.integration.jobs.support import batch_command, run_batch, run_json, tree_bytes
from tests.support.processes import ROOT


def calc_in_process(repository: Path, values: np.ndarray) -> np.ndarray:
    """Version 1 of `calc`, run here from the same model file the workers serve."""
    spec = importlib.util.spec_from_file_location("calc_v1", repository / "calc" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.infer({"IN": values})["OUT"]


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 10, size=(n, 4)).astype(np.float32)


def write_input(path: Path, values: np.ndarray) -> Path:
    fmt = path.suffix.lstrip(".")
    if fmt == "npy":
        np.save(path, values)
    elif fmt == "parquet":
        column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 4)
        pq.write_table(pa.table({"id": pa.array(range(len(values))), "IN": column}), path, row_group_size=70)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"IN": row.tolist()}) + "\n" for row in values))
    elif fmt == "csv":  # one column per element: IN.0 … IN.3
        pcsv.write_csv(pa.table({f"IN.{i}": values[:, i] for i in range(4)}), path)
    return path


@pytest.mark.parametrize(("in_fmt", "out_fmt"), [("parquet", "parquet"), ("jsonl", "jsonl"), ("npy", "npy"),
                                                ("csv", "parquet")])
def test_formats_through_the_router_keep_order_and_match_the_model(cluster, tmp_path, in_fmt, out_fmt):
    values = rows(300, seed=1)
    source = write_input(tmp_path / f"in.{in_fmt}", values)
    out = tmp_path / "out"
    summary = run_json("calc", "--input", str(source), "--output", str(out), "--output-format", out_fmt,
                       "--target", cluster.routers[0].address, "--api-key", cluster.keys["data"],
                       "--chunk-rows", "128", "--rows-per-request", "8")
    assert (summary["rows"], summary["written"], summary["errors"], summary["complete"]) == (300, 300, 0, True)
    result = read_output(out)
    np.testing.assert_array_equal(result["row"], np.arange(300))
    np.testing.assert_allclose(result["OUT"], calc_in_process(cluster.repository, values), rtol=1e-6)
    assert read_manifest(out)["complete"] is True


def test_text_column_feeds_a_bytes_input(cluster, tmp_path, monkeypatch):
    texts = ["héllo", "", "a longer sentence", "x" * 40]
    source = tmp_path / "text.jsonl"
    source.write_text("".join(json.dumps({"TEXT": t}) + "\n" for t in texts))
    out = tmp_path / "out"
    # --target and --api-key come from the environment when not given.
    summary = run_json("echo", "--input", str(source), "--output", str(out), "--output-format", "jsonl",
                       env={"SHUNTER_ROUTER": cluster.routers[0].address, "SHUNTER_API_KEY": cluster.keys["data"]})
    assert summary["written"] == 4
    lines = [json.loads(line) for line in (out / "part-000000.jsonl").read_text().splitlines()]
    assert lines == [{"row": i, "LENGTH": [len(t.encode())]} for i, t in enumerate(texts)]


def test_sigkill_mid_job_then_resume_gives_the_uninterrupted_bytes(picky, tmp_path):
    values = rows(4000, seed=2)
    values[[5, 1234, 3999]] = -1.0  # bad rows land in the errors file in both runs
    source = write_input(tmp_path / "in.parquet", values)
    common = ["picky", "--input", str(source), "--target", picky.address, "--chunk-rows", "100",
              "--rows-per-request", "4", "--json"]
    whole = tmp_path / "whole"
    assert run_batch(*common, "--output", str(whole), "--concurrency", "4").returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(batch_command(*common, "--output", str(killed), "--concurrency", "1"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            manifest = killed / "_manifest.json"
            if manifest.exists() and len(read_manifest(killed)["chunks"]) >= 3:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    partial = read_manifest(killed)
    assert not partial["complete"], "the job finished before it could be killed"
    assert len(partial["chunks"]) < 40
    with pytest.raises(Exception, match="incomplete"):
        read_output(killed)

    resumed = run_json(*common[:-1], "--output", str(killed), "--resume", "--concurrency", "4")
    assert resumed["complete"] and resumed["resumed_rows"] >= 300
    assert tree_bytes(killed) == tree_bytes(whole)
    errors = [json.loads(line) for line in (tmp_path / "killed.errors.jsonl").read_text().splitlines()]
    assert [e["row"] for e in errors] == [5, 1234, 3999]


def test_bad_rows_go_to_the_errors_file_and_the_job_finishes(picky, tmp_path):
    values = rows(50, seed=3)
    lines = [json.dumps({"IN": row.tolist()}) for row in values]
    lines[7] = "{not json"
    lines[20] = json.dumps({"IN": [1, 2]})
    lines[33] = json.dumps({"IN": [1, -2, 3, 4]})  # refused by the model itself
    lines[40] = json.dumps({"IN": ["a", "b", "c", "d"]})
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    summary = run_json("picky", "--input", str(source), "--output", str(out), "--target", picky.address,
                       "--concurrency", "1")
    assert (summary["rows"], summary["written"], summary["errors"]) == (50, 46, 4)
    errors = [json.loads(line) for line in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert [(e["row"], e["code"]) for e in errors] == [
        (7, "INVALID_ARGUMENT"), (20, "INVALID_ARGUMENT"), (33, "INVALID_ARGUMENT"), (40, "INVALID_ARGUMENT")]
    assert "not a JSON object" in errors[0]["message"] and "shape [2]" in errors[1]["message"]
    assert "must not be negative" in errors[2]["message"]
    result = read_output(out)
    good = [i for i in range(50) if i not in (7, 20, 33, 40)]
    np.testing.assert_array_equal(result["row"], good)
    np.testing.assert_allclose(result["OUT"], values[good] * 2)

    # --max-errors: exceeded → exit 3, the output stays marked incomplete.
    capped = tmp_path / "capped"
    done = run_batch("picky", "--input", str(source), "--output", str(capped), "--target", picky.address,
                     "--max-errors", "2", "--chunk-rows", "10", "--json")
    assert done.returncode == 3, done.stderr
    assert "exceed --max-errors 2" in done.stderr
    assert read_manifest(capped)["complete"] is False


def test_shards_together_cover_the_input_exactly_once(picky, tmp_path):
    values = rows(1000, seed=4)
    source = write_input(tmp_path / "in.npy", values)
    seen = []
    for index in range(3):
        out = tmp_path / f"shard-{index}"
        run_json("picky", "--input", str(source), "--output", str(out), "--target", picky.address,
                 "--shard", f"{index}/3", "--chunk-rows", "64")
        seen.append(read_output(out))
    all_rows = np.concatenate([part["row"] for part in seen])
    assert sorted(all_rows.tolist()) == list(range(1000))
    for part in seen:
        np.testing.assert_allclose(part["OUT"], values[part["row"]] * 2)


def test_a_rate_limited_key_waits_and_finishes(cluster, tmp_path):
    values = rows(120, seed=5)
    source = write_input(tmp_path / "in.npy", values)
    out = tmp_path / "out"
    # 50 requests/s with a burst of 10: 30 requests of 4 rows cannot all pass at once.
    summary = run_json("calc", "--input", str(source), "--output", str(out), "--target", cluster.routers[0].address,
                       "--api-key", cluster.keys["limited"], "--rows-per-request", "4", "--concurrency", "8")
    assert summary["complete"] and summary["written"] == 120 and summary["errors"] == 0
    assert summary["rate_limited_waits"] > 0
    np.testing.assert_allclose(read_output(out)["OUT"], calc_in_process(cluster.repository, values), rtol=1e-6)


def test_a_worker_killed_mid_job_loses_nothing(cluster, tmp_path):
    values = rows(6000, seed=6)
    source = write_input(tmp_path / "in.npy", values)
    out = tmp_path / "out"
    extra = cluster.add_worker()
    proc = subprocess.Popen(
        batch_command("calc", "--input", str(source), "--output", str(out), "--target", cluster.routers[0].address,
                      "--api-key", cluster.keys["data"], "--rows-per-request", "2", "--concurrency", "8",
                      "--chunk-rows", "500", "--json"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out / "part-000000.parquet").exists():
            time.sleep(0.01)
        extra.kill()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.workers.remove(extra)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert (summary["written"], summary["errors"]) == (6000, 0)
    result = read_output(out)
    np.testing.assert_array_equal(result["row"], np.arange(6000))
    np.testing.assert_allclose(result["OUT"], calc_in_process(cluster.repository, values), rtol=1e-6)
