"""`shunter stream` on a real Redis Cluster: streams that share a hash tag, one result each."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import numpy as np
import pytest
from redis.cluster import ClusterNode, RedisCluster

from tests.integration.jobs.support import start_consumer, stream_command
from tests.integration.router.cluster import wait_for
from tests.support.processes import ROOT
from tests.support.redis_cluster import start_cluster


@pytest.fixture(scope="module")
def cluster():
    deployment = start_cluster()
    yield deployment
    deployment.stop()


def test_stream_on_a_cluster_writes_one_result_per_event(cluster, picky):
    r = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in cluster.nodes[:3]])
    values = np.arange(200 * 4, dtype=np.float32).reshape(200, 4)
    ids = [r.xadd("{digits}:in", {"inputs": json.dumps({"IN": row.tolist()})}).decode() for row in values]
    consumer = start_consumer(
        "picky", "--redis-url", cluster.url, "--input-stream", "{digits}:in", "--output-stream", "{digits}:out",
        "--group", "g", "--consumer", "c1", "--target", picky.address, "--batch", "32",
    )
    try:
        wait_for(lambda: r.xlen("{digits}:out") >= len(ids), 60, "every event handled")
        assert consumer.terminate() == 0
    finally:
        consumer.kill()
    results = r.xrange("{digits}:out")
    assert Counter(f[b"id"].decode() for _, f in results) == Counter(ids)
    assert r.xpending("{digits}:in", "g")["pending"] == 0
    r.close()


def test_streams_in_different_slots_are_refused_naming_the_fix(cluster, picky):
    done = subprocess.run(
        stream_command("picky", "--redis-url", cluster.url, "--input-stream", "in", "--output-stream", "out",
                       "--group", "g", "--target", picky.address),
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "must share one hash tag" in done.stderr and "{digits}:in" in done.stderr
