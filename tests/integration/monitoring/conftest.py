"""Fixtures for monitoring tests: the registry tests' Redis, admin key and registry, the
example models and the digits train / held-out split, and the `shunter` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.registry.conftest import admin, redis_server, registry  # noqa: F401 (fixtures)
from tests.support import digits_eval
from tests.support.models import build_examples
from tests.support.processes import ROOT


@pytest.fixture(scope="module")
def examples() -> Path:
    return build_examples()


@pytest.fixture(scope="module")
def digits_sets(tmp_path_factory) -> tuple[Path, Path]:
    """(held-out eval.npz, training transfer.npz), split as the example model was trained."""
    return digits_eval.write(tmp_path_factory.mktemp("digits-sets"))


@pytest.fixture(scope="module")
def shunter(registry, admin):  # noqa: F811 (fixtures)
    env = {**os.environ, "SHUNTER_REGISTRY": registry.address, "SHUNTER_ADMIN_KEY": admin.key}

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, capture_output=True, text=True,
            env=env, timeout=120,
        )
        assert proc.returncode == code, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        return proc

    return run
