"""`shunter up` failing fast: what it checks before starting anything, and a model that will not load.

Each case runs the real command as a user would and reads its exit code and terminal
output; none needs the cluster to come up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

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
