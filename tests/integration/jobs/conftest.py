"""Shared processes for the job tests: one cluster and one standalone worker per package."""

from __future__ import annotations

import pytest

from tests.integration.jobs.support import start_picky_worker
from tests.integration.router.cluster import Cluster, start_cluster


@pytest.fixture(scope="package")
def cluster(tmp_path_factory) -> Cluster:
    started = start_cluster(tmp_path_factory.mktemp("jobs-cluster"), workers=2, routers=1)
    started.set_policy("calc", {"1": 100})
    yield started
    started.stop()


@pytest.fixture(scope="package")
def picky(tmp_path_factory):
    worker = start_picky_worker(tmp_path_factory.mktemp("jobs-picky"))
    yield worker
    worker.terminate()
    assert "Traceback" not in worker.logs(), worker.logs()
