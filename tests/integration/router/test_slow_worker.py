"""A worker 50 ms slower beside a fast one gets a small share of a router's requests.

The router reaches the second worker through tests/support/delay_line.py (50 ms on every
reply). One caller at a time: power of two choices on outstanding counts alone sees both
workers at 0 outstanding on every pick and sends the slow one half the requests (and with
more callers, one whenever it is idle: enough to put the p99 at the slow worker's latency).
Latency-aware choice and outlier ejection keep it to a few, so the latency is the fast
worker's. Counts from the workers' own metrics, no timings: with one caller the share does
not depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.router.cluster import worker_inferences
from tests.reliability import load
from tests.reliability.cluster import quick_repository, quick_request, start_small


@pytest.fixture()
def cluster(tmp_path):
    cluster = start_small(tmp_path, quick_repository(tmp_path / "models"))
    try:
        cluster.start_worker("quick")
        cluster.start_worker("quick", behind_delay_line=True)
        cluster.add_router()
        cluster.create_key("data")
        yield cluster
    finally:
        cluster.stop()


async def test_slow_worker_gets_a_small_share(cluster):
    router = cluster.routers[0]
    fast, slow = cluster.workers
    metadata = (("authorization", f"Bearer {cluster.keys['data']}"),)
    cluster.delay_lines[0].delay(True)
    await asyncio.sleep(0.1)
    before = worker_inferences(fast.metrics_url), worker_inferences(slow.metrics_url)
    run = await load.closed_loop(router.address, quick_request(), 1, 3.0, metadata=metadata, connections=1)
    fast_n = worker_inferences(fast.metrics_url) - before[0]
    slow_n = worker_inferences(slow.metrics_url) - before[1]
    assert run.by_code() == {"OK": run.total}
    assert fast_n + slow_n >= run.total  # every request was served by one of the two
    assert slow_n < 0.1 * (fast_n + slow_n), (fast_n, slow_n)
