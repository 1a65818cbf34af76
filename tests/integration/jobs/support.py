"""Helpers for the job tests: a standalone worker with a picky model, running `shunter batch`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import ROOT, ServiceProcess, _pump, start_service

#: FP32[4] → FP32[4] (twice the input). Any batch holding a negative value is refused with
#: INVALID_ARGUMENT, as a model that validates its own inputs would: the server-side bad row.
PICKY_CONFIG = """
backend: python
max_batch_size: 8
inputs: [{name: IN, datatype: FP32, shape: [4]}]
outputs: [{name: OUT, datatype: FP32, shape: [4]}]
dynamic_batching: {max_queue_delay_us: 200, max_queue_size: 1024}
"""
PICKY_MODEL = """
import numpy as np

from services.common.errors import InvalidArgument


def infer(inputs):
    values = inputs["IN"]
    if (values < 0).any():
        raise InvalidArgument("IN must not be negative")
    return {"OUT": (values * 2).astype(np.float32)}
"""


def write_picky_repository(root: Path) -> Path:
    (root / "picky" / "1").mkdir(parents=True, exist_ok=True)
    (root / "picky" / "config.yaml").write_text(textwrap.dedent(PICKY_CONFIG))
    (root / "picky" / "1" / "model.py").write_text(PICKY_MODEL)
    return root


def start_picky_worker(tmp: Path) -> ServiceProcess:
    repository = write_picky_repository(tmp / "picky-models")
    return start_service(["worker", "--model-repository", str(repository), "--port", "0"])


def batch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli.main", "batch", *args]


def run_batch(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        batch_command(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def run_json(*args: str, env: dict[str, str] | None = None) -> dict:
    done = run_batch(*args, "--json", env=env)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def tree_bytes(output: Path) -> dict[str, bytes]:
    """Every file of a job's output (directory and errors file) by name, for byte comparisons."""
    files = {p.name: p.read_bytes() for p in sorted(output.iterdir())}
    files["errors"] = output.with_name(output.name + ".errors.jsonl").read_bytes()
    return files


STREAM_READY = "shunter stream consuming "


@dataclass
class StreamConsumer:
    proc: subprocess.Popen
    metrics_url: str
    stderr_tail: deque

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def logs(self) -> str:
        return "\n".join(self.stderr_tail)


def stream_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli.main", "stream", *args]


def start_consumer(*args: str, timeout: float = 60) -> StreamConsumer:
    """Run `shunter stream ARGS` and wait for its 'consuming' line; fail fast if it exits."""
    proc = subprocess.Popen(stream_command(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    tail: deque = deque(maxlen=300)
    threading.Thread(target=_pump, args=(proc.stderr, tail), daemon=True).start()
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise RuntimeError(f"shunter stream exited with {proc.returncode}:\n" + "\n".join(tail))
        if line.startswith(STREAM_READY):
            host_port = line.strip().rsplit(" ", 1)[1]
            threading.Thread(target=_pump, args=(proc.stdout, deque(maxlen=10)), daemon=True).start()
            return StreamConsumer(proc, f"http://{host_port}/metrics", tail)
    proc.kill()
    raise TimeoutError("shunter stream not consuming in time")
