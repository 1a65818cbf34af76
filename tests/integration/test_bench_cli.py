"""`shunter bench` against a real worker: the JSON report's shape, and every call OK.

Timing is never asserted: only counts, keys and the ordering of percentiles.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from tests.support.models import build_examples
from tests.support.processes import ROOT, start_service

LATENCY_KEYS = ("min", "p50", "p90", "p95", "p99", "max", "mean")


def _worker_missing() -> str | None:
    if not (ROOT / "services" / "cli" / "worker_cmd.py").exists():
        return "`shunter worker` is not available yet (services/cli/worker_cmd.py missing)"
    if not (ROOT / "scripts" / "build_examples.py").exists():
        return "example models cannot be built yet (scripts/build_examples.py missing)"
    return None


@pytest.fixture(scope="module")
def worker():
    reason = _worker_missing()
    if reason:
        pytest.skip(reason)
    repo = build_examples()
    service = start_service(["worker", "--model-repository", str(repo), "--models", "digits,minilm", "--port", "0"])
    yield service
    assert service.terminate() == 0, service.logs()


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_report(report: dict) -> None:
    assert set(report) >= {
        "requests",
        "rows",
        "duration_s",
        "throughput_rps",
        "rows_per_s",
        "latency_ms",
        "codes",
    }
    assert report["requests"] > 0
    assert report["codes"] == {"OK": report["requests"]}, report["codes"]
    assert report["duration_s"] > 0
    assert report["throughput_rps"] > 0 and report["rows_per_s"] > 0
    latency = report["latency_ms"]
    assert set(latency) == set(LATENCY_KEYS)
    ordered = [latency[k] for k in ("min", "p50", "p90", "p95", "p99", "max")]
    assert ordered == sorted(ordered)
    assert latency["min"] <= latency["mean"] <= latency["max"]


def test_closed_loop_over_two_processes(worker):
    done = bench(
        "--target",
        worker.address,
        "--model",
        "digits",
        "--concurrency",
        "4",
        "--duration",
        "1",
        "--processes",
        "2",
        "--warmup",
        "0.2",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    check_report(report)
    assert report["mode"] == "closed" and report["processes"] == 2
    assert report["rows"] == report["requests"]


def _connections_to(port: int, root: psutil.Process) -> int:
    """Established TCP connections from ``root`` and its children to ``port``."""
    count = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            connections = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue  # a child that just exited
        count += sum(1 for c in connections if c.raddr and c.raddr.port == port and c.status == "ESTABLISHED")
    return count


def test_connections_open_one_tcp_connection_each(worker):
    """--connections 5 over 2 processes: five connections to the server, not one shared."""
    port = int(worker.address.rsplit(":", 1)[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "bench", "--target", worker.address, "--model", "digits",
         "--concurrency", "8", "--duration", "2", "--warmup", "0.5", "--processes", "2", "--connections", "5",
         "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    seen = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        seen = max(seen, _connections_to(port, root))
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    report = json.loads(out)
    check_report(report)
    assert report["connections"] == 5 and report["processes"] == 2
    assert seen == 5


def test_open_loop_with_text_and_batch_rows(worker):
    done = bench(
        "--target",
        worker.address,
        "--model",
        "minilm",
        "--rate",
        "20",
        "--duration",
        "1",
        "--processes",
        "1",
        "--batch-rows",
        "2",
        "--warmup",
        "0.2",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    check_report(report)
    assert report["mode"] == "open"
    assert report["rows"] == 2 * report["requests"]
    assert report["inputs"] == {"TEXT": "BYTES[2, 1]"}


def test_table_output_and_unknown_model(worker):
    done = bench(
        "--target",
        worker.address,
        "--model",
        "digits",
        "--concurrency",
        "1",
        "--duration",
        "0.3",
        "--processes",
        "1",
        "--warmup",
        "0",
    )
    assert done.returncode == 0, done.stderr
    for word in ("Requests", "Throughput", "p99", "Status codes", "OK"):
        assert word in done.stdout
    missing = bench("--target", worker.address, "--model", "no-such-model", "--duration", "0.3")
    assert missing.returncode == 2
    assert "NOT_FOUND" in missing.stderr


def test_input_file_rows_become_the_requests(worker, tmp_path):
    with np.load(build_examples() / "digits" / "sample.npz", allow_pickle=False) as data:
        images = data["images"][:10]
    np.savez(tmp_path / "rows.npz", input__0=images)
    common = ("--target", worker.address, "--model", "digits", "--concurrency", "2", "--duration", "0.5",
              "--processes", "1", "--warmup", "0", "--batch-rows", "2")
    done = bench(*common, "--input", str(tmp_path / "rows.npz"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    check_report(report)
    assert report["requests_from"] == "5 requests from --input, in turn"
    np.savez(tmp_path / "wrong.npz", pixels=images, other=images)
    wrong = bench(*common, "--input", str(tmp_path / "wrong.npz"))
    assert wrong.returncode == 2
    assert "no array for input(s) input__0 (has: pixels, other)" in wrong.stderr
    both = bench(*common, "--input", str(tmp_path / "rows.npz"), "--random-inputs")
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_bad_metadata_option_is_refused(worker):
    done = bench("--target", worker.address, "--model", "digits", "-H", "no-separator")
    assert done.returncode == 2 and "-H 'no-separator' is not KEY=VALUE" in done.stderr

