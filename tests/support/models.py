"""Model repositories for tests: the example models, and tiny python models made on the fly.

Safe to import next to tritonclient (no generated inference protos here).
"""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.processes import ROOT

EXAMPLES = ROOT / "examples" / "models"


@functools.cache
def build_examples() -> Path:
    """Build (or reuse) examples/models via the same script scripts/test runs (once per session)."""
    subprocess.run([sys.executable, "scripts/build_examples.py"], cwd=ROOT, check=True, capture_output=True)
    return EXAMPLES


SLOW_MODEL = """
import time

import numpy as np

DELAY_S = {delay_s}


def infer(inputs):
    time.sleep(DELAY_S)
    return {{"OUT": (inputs["IN"] * 2).astype(np.float32)}}
"""


def write_python_model(
    repo: Path,
    name: str = "slow",
    *,
    delay_s: float = 0.2,
    max_batch_size: int = 4,
    batching: bool = True,
    max_queue_size: int = 8,
) -> Path:
    """A pure-python model that doubles FP32[4] after sleeping ``delay_s`` per batch."""
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    config = f"""
        backend: python
        max_batch_size: {max_batch_size}
        inputs: [{{name: IN, datatype: FP32, shape: [4]}}]
        outputs: [{{name: OUT, datatype: FP32, shape: [4]}}]
        handler: model.py
    """
    if batching:
        config += f"""
        dynamic_batching: {{max_queue_delay_us: 20000, max_queue_size: {max_queue_size}}}
        """
    (model_dir / "config.yaml").write_text(textwrap.dedent(config))
    (model_dir / "model.py").write_text(SLOW_MODEL.format(delay_s=delay_s))
    return model_dir
