"""`shunter bench --stream --timeout S`: S is each request's limit, and the server is told it.

A unary call carries its deadline to the server (gRPC's ``grpc-timeout``), so a worker
drops a request the client gave up on before computing it. On a stream the call's deadline
would be the whole stream's, so each message must carry its own in Triton's ``timeout``
parameter; without it the worker computes every abandoned message while fresh ones queue
behind, and under load every call of the run can end DEADLINE_EXCEEDED. Against a real
worker serving a model slower than the timeout, the worker itself must answer the queued
messages DEADLINE_EXCEEDED. No timing is asserted: one batch takes several timeouts.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.router.cluster import metric
from tests.support.models import write_python_model
from tests.support.processes import ROOT, start_service

#: One request (batch of one) takes this long; the bench's timeout is a fraction of it.
DELAY_S = 0.5
TIMEOUT_S = 0.2


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    repo = tmp_path_factory.mktemp("models")
    write_python_model(repo, "slow", delay_s=DELAY_S, max_batch_size=1, max_queue_size=100)
    # Without deadline admission the worker queues each message and drops it once its
    # deadline passes: a DEADLINE_EXCEEDED it can only give when it knows the deadline.
    service = start_service(
        ["worker", "--model-repository", str(repo), "--port", "0", "--no-deadline-admission"]
    )
    yield service
    assert service.terminate() == 0, service.logs()


def test_stream_timeout_is_each_messages_deadline_on_the_worker(worker):
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "bench", "--target", worker.address, "--model", "slow",
         "--stream", "--timeout", str(TIMEOUT_S), "--concurrency", "4", "--duration", "2", "--warmup", "0",
         "--processes", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    codes = json.loads(done.stdout)["codes"]
    assert codes.get("DEADLINE_EXCEEDED", 0) > 0 and set(codes) <= {"OK", "DEADLINE_EXCEEDED"}, codes
    # The worker, not only the client, ended queued messages at their deadline.
    expired = metric(worker.metrics_url, "shunter_requests_total", service="worker", method="ModelStreamInfer",
                     code="DEADLINE_EXCEEDED")
    assert expired > 0, worker.logs()
