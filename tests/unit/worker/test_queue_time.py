"""The batcher's queue sized in time: expected wait from rows ahead and batch time, and refusal."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.common.admission import OVERLOAD_PREFIX, Overloaded
from services.worker.batching.batcher import Batcher, EngineInstance
from services.worker.batching.policy import BatchPolicy
from services.worker.batching.queue_time import MIN_BATCHES, QueueTime
from services.worker.daemon_executor import DaemonThreadExecutor


def warmed(batch_s: float = 0.1, **kwargs) -> QueueTime:
    queue = QueueTime(**{"max_batch_rows": 8, "instances": 1, **kwargs})
    for _ in range(MIN_BATCHES):
        queue.observe_batch(batch_s)
    return queue


def test_rows_ahead_count_in_batches_not_requests():
    queue = warmed()
    assert queue.wait_s(queued_rows=7, running=0) == 0.0  # joins the partial batch
    assert queue.wait_s(queued_rows=16, running=0) == pytest.approx(0.2)
    assert queue.wait_s(queued_rows=0, running=1) == pytest.approx(0.05)  # half a batch left, on average
    assert warmed(instances=2).wait_s(queued_rows=16, running=0) == pytest.approx(0.1)


def test_no_estimate_before_batches_were_seen():
    assert QueueTime(8, 1).wait_s(queued_rows=10_000, running=2) == 0.0


def test_wait_over_the_bound_is_refused():
    queue = warmed(max_queue_wait_s=0.15)
    queue.admit(queued_rows=8, running=0, timeout_s=None)  # 0.1 s: admitted
    with pytest.raises(Overloaded) as info:
        queue.admit(queued_rows=16, running=0, timeout_s=None, name="m/1")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.message.startswith(OVERLOAD_PREFIX) and "150 ms bound" in info.value.message


def test_deadline_shorter_than_wait_plus_own_batch_is_refused():
    queue = warmed()
    queue.admit(queued_rows=8, running=0, timeout_s=0.25)  # 0.1 wait + 0.1 own batch fits
    with pytest.raises(Overloaded, match="left of the request's deadline"):
        queue.admit(queued_rows=8, running=0, timeout_s=0.15)
    warmed(deadline_aware=False).admit(queued_rows=800, running=0, timeout_s=0.01)
    assert queue.refused == 1


async def test_batcher_refuses_before_queueing_once_it_knows_its_batch_time():
    """A real batcher whose engine takes a while: a request with too little deadline left is refused."""
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def infer(inputs):
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
        return {"y": inputs["x"] * 2}

    executor = DaemonThreadExecutor("test-queue-time")
    batcher = Batcher([EngineInstance(infer, executor)], BatchPolicy(2, 0.0), 100, max_queue_wait_s=0.0)
    batcher.start()
    for _ in range(MIN_BATCHES):  # batches that each take about 20 ms
        loop.call_later(0.02, release.set)
        await batcher.submit({"x": np.ones((1, 1))}, 1)
        release.clear()
    queued = [asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))}, 1)) for _ in range(8)]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await batcher.submit({"x": np.ones((1, 1))}, 1, timeout_s=0.001)
    release.set()
    await asyncio.gather(*queued)
    await batcher.close()
