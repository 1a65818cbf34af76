"""``shunter bench --stream`` against a real router: answers matched to their requests, and
per-message statuses counted while the stream stays open. No timing is asserted."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import grpc
import numpy as np

from services.bench.stream import StreamCaller
from services.gen.inference import grpc_service_pb2 as pb
from tests.integration.router.client import calc_request
from tests.integration.router.cluster import Cluster
from tests.support.processes import ROOT


def bench(key: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "bench", "--model", "calc", "--stream", "--json", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "SHUNTER_API_KEY": key},
    )


async def test_stream_caller_gets_each_request_its_own_answer(cluster: Cluster):
    async with grpc.aio.insecure_channel(cluster.routers[0].address) as channel:
        caller = StreamCaller(channel, (("authorization", f"Bearer {cluster.keys['data']}"),), "t")
        payloads = [calc_request(values=(i, i + 1, 0, -i)).SerializeToString() for i in range(40)]
        bad = calc_request()
        bad.inputs[0].shape[:] = [1, 5]
        results = await asyncio.gather(
            *(caller.infer_response(p, 10.0) for p in payloads), caller.infer_response(bad.SerializeToString(), 10.0)
        )
        await caller.close()
    for i, (status, response) in enumerate(results[:-1]):
        assert status == "OK", (i, status)
        assert isinstance(response, pb.ModelInferResponse)
        values = np.frombuffer(response.raw_output_contents[0], "<f4")
        np.testing.assert_array_equal(values, 2 * np.asarray((i, i + 1, 0, -i), "<f4"))
    status, response = results[-1]
    assert status == "INVALID_ARGUMENT" and response is not None


def test_bench_stream_through_the_router(cluster: Cluster):
    done = bench(cluster.keys["data"], "--target", cluster.routers[0].address, "--concurrency", "8",
                 "--duration", "1", "--warmup", "0.2", "--processes", "1", "--connections", "2")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["stream"] is True and report["connections"] == 2
    assert report["requests"] > 0
    assert report["codes"] == {"OK": report["requests"]}, report["codes"]


def test_bench_stream_counts_each_messages_status(cluster: Cluster):
    # 50 requests/s with a burst of 10: most messages are refused, each on its own, and
    # the stream carries on (no UNAVAILABLE or CANCELLED from a broken stream).
    done = bench(cluster.keys["limited"], "--target", cluster.routers[0].address, "--concurrency", "4",
                 "--duration", "1", "--warmup", "0", "--processes", "1")
    assert done.returncode == 0, done.stderr
    codes = json.loads(done.stdout)["codes"]
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["RESOURCE_EXHAUSTED"] > codes["OK"] > 0


def test_bench_stream_refuses_a_header_that_varies_per_call(cluster: Cluster):
    done = bench(cluster.keys["data"], "--target", cluster.routers[0].address, "--vary-header", "x-user")
    assert done.returncode == 2
    assert "--vary-header needs unary calls" in done.stderr
