"""pytest plugin for the lent GPU machine: the engine tests read the carried example models.

tests/unit/worker/test_engines.py gets its models from
``tests.support.models.build_examples()``, which runs scripts/build_examples.py for every
example. The GPU machine cannot build minilm (its weights package is not installed there)
and has no need to rebuild digits, which travels in .gpu-carry. Loaded with
``-p gpu_pytest_plugin`` (scripts/bench on PYTHONPATH), this points ``build_examples`` at
the repository named by SHUNTER_EXAMPLES before any test module imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tests.support.models as models


def _carried() -> Path:
    path = Path(os.environ["SHUNTER_EXAMPLES"])
    if not (path / "digits" / "1" / "model.pt").is_file():
        raise RuntimeError(f"SHUNTER_EXAMPLES={path} holds no digits model (run scripts/bench/gpu_prepare)")
    return path


def pytest_configure(config: pytest.Config) -> None:
    models.build_examples = _carried
