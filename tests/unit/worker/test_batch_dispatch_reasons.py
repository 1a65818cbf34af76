"""Why each batch went: a real Batcher and its policy name the rule that sent every batch.

The reasons are what tells "batches are small because the queue delay ran out with few
requests waiting" from "because a preferred size was reached" (README "config.yaml");
these tests form batches with the real shell and check the rule each one reports (the
worker counts them in shunter_worker_batches_total, tests/integration/worker/
test_worker_batching_threads.py). No timing is asserted: the delays only have to pass.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.worker.batching.batcher import Batcher, BatchTiming, EngineInstance
from services.worker.batching.policy import REASONS, BatchPolicy, Dispatch, decide


def double(inputs):
    return {"y": inputs["x"] * 2}


async def run_batches(policy: BatchPolicy, row_counts: list[int], batched: bool = True) -> list[BatchTiming]:
    """Submit one request per entry of ``row_counts`` at once; return the batches' timings."""
    timings: list[BatchTiming] = []
    pool = [EngineInstance(double, ThreadPoolExecutor(1))]
    batcher = Batcher(pool, policy, 100, batched=batched, on_batch=timings.append)
    batcher.start()
    try:
        inputs = [np.full((rows, 2), i, dtype=np.float32) for i, rows in enumerate(row_counts)]
        results = await asyncio.gather(*(batcher.submit({"x": x}, len(x)) for x in inputs))
        for x, result in zip(inputs, results, strict=True):
            np.testing.assert_array_equal(result["y"], x * 2)
    finally:
        await batcher.close()
    return timings


async def test_a_full_batch_goes_as_full():
    # Eight one-row requests queued before the loop looks: max_batch_size rows, rule 2.
    timings = await run_batches(BatchPolicy(8, 10.0), [1] * 8)
    assert [(t.rows, t.reason) for t in timings] == [(8, "full")]


async def test_a_preferred_size_goes_first_and_the_rest_waits_out_the_delay():
    # Six rows waiting, preferred 4: four go at once (rule 3); the two left are fewer than
    # the six seen in flight, so they wait for the queue delay (rule 4).
    timings = await run_batches(BatchPolicy(8, 0.001, (4,)), [1] * 6)
    assert [(t.rows, t.reason) for t in timings] == [(4, "preferred"), (2, "delay")]


async def test_a_lone_caller_goes_at_once_as_expected():
    # Everything in flight is already queued: waiting cannot grow the batch (rule 5),
    # although the delay (10 s) has not passed.
    timings = await run_batches(BatchPolicy(8, 10.0), [3])
    assert [(t.rows, t.reason) for t in timings] == [(3, "expected")]


async def test_unbatched_versions_say_so():
    timings = await run_batches(BatchPolicy.unbatched(), [1, 1], batched=False)
    assert [t.reason for t in timings] == ["unbatched", "unbatched"]


def test_every_reason_the_policy_gives_is_a_known_one():
    policy = BatchPolicy(8, 0.002, (4,))
    cases = [
        decide([9], 0.0, policy),  # oversize
        decide([8], 0.0, policy),  # full
        decide([2, 2], 0.0, policy),  # preferred
        decide([1], 0.01, policy),  # delay
        decide([1], 0.0, policy, expected_rows=1),  # expected
        decide([1], 0.0, policy, expected_rows=1, instance_free=False),  # expected, staged
    ]
    assert [c.reason for c in cases if isinstance(c, Dispatch)] == [
        "oversize",
        "full",
        "preferred",
        "delay",
        "expected",
        "expected",
    ]
    assert {c.reason for c in cases if isinstance(c, Dispatch)} <= set(REASONS)
