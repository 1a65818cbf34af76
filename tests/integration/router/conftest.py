"""One real cluster (redis, registry, two workers, two routers) shared by the router tests."""

from __future__ import annotations

import pytest

from tests.integration.router.cluster import Cluster, start_cluster

#: Routers cap messages at 1 MiB here, so the size-limit test needs no huge payload.
MAX_MESSAGE_BYTES = 1 << 20


@pytest.fixture(scope="package")
def cluster(tmp_path_factory) -> Cluster:
    started = start_cluster(
        tmp_path_factory.mktemp("router-cluster"), router_args=("--max-message-bytes", str(MAX_MESSAGE_BYTES))
    )
    started.set_policy("calc", {"1": 100})
    yield started
    logs = {r.address: r.logs() for r in started.routers}
    started.stop()
    for address, log in logs.items():
        assert "Traceback" not in log, f"router {address} logged an unexpected error:\n{log}"
