"""`shunter up` failing fast: what it checks before starting anything, and a model that will not load.

Each case runs the real command as a user would and reads its exit code and terminal
output; none needs the cluster to come up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.router.cluster import write_repository
from tests.support.processes import ROOT


def run_up(repository: Path, run_dir: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "up", "--model-repository", str(repository),
         "--workers", "1", "--run-dir", str(run_dir), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_port_in_use_is_refused_before_anything_starts(tmp_path):
    repository = write_repository(tmp_path / "models")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_up(repository, tmp_path / "run", "--port", str(port))
    assert done.returncode == 2, done.stderr
    assert f"--port {port}: 127.0.0.1:{port} is already in use" in done.stderr
    assert "nothing was started" in done.stderr
    assert not list((tmp_path / "run").glob("*.log"))  # no redis, registry or worker was started


def test_missing_artifact_and_bad_config_are_named_before_anything_starts(tmp_path):
    repository = write_repository(tmp_path / "models")
    (repository / "calc" / "2" / "model.py").unlink()
    (repository / "echo" / "config.yaml").write_text("backend: python\nmax_batch_size: 8\nbogus_key: 1\n")
    done = run_up(repository, tmp_path / "run", "--port", "0")
    assert done.returncode == 2, done.stderr
    assert f"calc version 2: {repository / 'calc' / '2' / 'model.py'} is missing" in done.stderr
    assert "echo version 1:" in done.stderr and "bogus_key" in done.stderr
    assert not list((tmp_path / "run").glob("*.log"))


def test_a_model_that_fails_to_load_ends_start_up_with_its_error_and_log_path(tmp_path):
    repository = write_repository(tmp_path / "models")
    (repository / "calc" / "3" / "model.py").write_text("raise RuntimeError('weights are corrupt')\n")
    done = run_up(repository, tmp_path / "run", "--port", "0", "--ready-timeout-s", "300")
    assert done.returncode == 1, done.stderr
    assert "calc version 3 (python) failed to load" in done.stderr
    assert "weights are corrupt" in done.stderr
    assert str(tmp_path / "run" / "worker-1.log") in done.stderr
    assert "export SHUNTER_ROUTER" not in done.stdout


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children of children too), from /proc."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    if int(child) not in found:
                        found.add(int(child))
                        todo.append(int(child))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_children_stop_when_up_is_killed_outright(tmp_path):
    """SIGKILL gives `shunter up` no chance to stop its children; the kernel must do it for it."""
    repository = write_repository(tmp_path / "models")
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--model-repository", str(repository),
         "--workers", "1", "--port", "0", "--run-dir", str(tmp_path / "run")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    children: set[int] = set()
    try:
        for line in iter(up.stdout.readline, ""):
            if line.startswith("# Ctrl-C"):
                break
        assert up.poll() is None, "shunter up did not come up"
        children = _descendants(up.pid)
        assert len(children) >= 4  # redis, registry, worker, router
        up.kill()
        up.wait()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.2)
        assert not [pid for pid in children if _alive(pid)], "children outlived a killed shunter up"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
