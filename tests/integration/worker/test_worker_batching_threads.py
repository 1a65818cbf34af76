"""A real worker: engine instance threads run at ``--engine-nice`` below the event loop, and
every executed batch is counted by the rule that sent it (``shunter_worker_batches_total``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.gen.inference import grpc_service_pb2 as pb
from services.gen.inference import grpc_service_pb2_grpc as pb_grpc
from tests.integration.router.cluster import metric
from tests.support.models import build_examples
from tests.support.processes import start_service

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads per-thread nice values from /proc")

ENGINE_NICE = 7


def thread_nice(pid: int) -> dict[int, int]:
    """tid → nice value of every thread of ``pid`` (field 19 of /proc/PID/task/TID/stat)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        found[int(task.name)] = int(stat.rsplit(")", 1)[1].split()[16])
    return found


def test_engine_threads_run_below_the_loop_and_batches_name_their_rule():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base > 19 - ENGINE_NICE:
        pytest.skip(f"the test runs at nice {base}: no room to lower the engines by {ENGINE_NICE}")
    worker = start_service(
        [
            "worker",
            "--model-repository",
            str(build_examples()),
            "--models",
            "tabular",
            "--port",
            "0",
            "--engine-nice",
            str(ENGINE_NICE),
        ]
    )
    try:
        nice = thread_nice(worker.proc.pid)
        assert nice[worker.proc.pid] == base, "the event loop (main thread) keeps the process's priority"
        # tabular/config.yaml: two instances, one thread each, for each of its two versions.
        assert sorted(v for v in nice.values() if v == base + ENGINE_NICE) == [base + ENGINE_NICE] * 4, nice

        request = pb.ModelInferRequest(model_name="tabular")
        request.inputs.add(name="input__0", datatype="FP32", shape=[3, 64])
        request.raw_input_contents.append(np.zeros((3, 64), dtype=np.float32).tobytes())
        with grpc.insecure_channel(worker.address) as channel:
            response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert list(response.outputs[0].shape) == [3, 10]
        # One caller with nothing else in flight: its batch goes at once (rule 5).
        assert metric(worker.metrics_url, "shunter_worker_batches_total", model="tabular", reason="expected") == 1
    finally:
        assert worker.terminate() == 0
