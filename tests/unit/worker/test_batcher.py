"""The async batcher shell with a fake engine: every future is resolved on every path."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.common.errors import DeadlineExceeded, EngineError, Unavailable
from services.worker.batching import batcher as batcher_module
from services.worker.batching.batcher import Batcher, EngineInstance
from services.worker.batching.policy import BatchPolicy


class FakeEngine:
    """Doubles its input; records the batch sizes it saw; can be told to fail or block."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.entered = 0
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def infer(self, inputs):
        self.entered += 1
        self.gate.wait(5)
        x = inputs["x"]
        self.batches.append(x.shape[0])
        if self.fail:
            raise RuntimeError("boom")
        return {"y": x * 2}


class FakeClock:
    """The batcher's clock, moved by hand: deadlines pass when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_batcher(engine, instances=1, max_batch=8, delay_s=0.05, queue=100, batched=True, clock=time.monotonic):
    pool = [EngineInstance(engine.infer, ThreadPoolExecutor(1)) for _ in range(instances)]
    batcher = Batcher(pool, BatchPolicy(max_batch, delay_s), queue, batched=batched, clock=clock)
    batcher.start()
    return batcher


async def until(condition, what: str) -> None:
    """Wait for a state of the batcher (its loop runs on this event loop; engines on threads)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def rows(n, value):
    return {"x": np.full((n, 2), value, dtype=np.float32)}


async def test_requests_of_different_sizes_share_a_batch_and_get_their_rows_back():
    engine = FakeEngine()
    batcher = make_batcher(engine, max_batch=8, delay_s=0.2)
    sizes = [1, 3, 2, 2]
    results = await asyncio.gather(*(batcher.submit(rows(n, i), n) for i, n in enumerate(sizes)))
    for i, (n, result) in enumerate(zip(sizes, results, strict=True)):
        assert result["y"].shape == (n, 2)
        assert np.all(result["y"] == 2 * i)
    assert engine.batches == [8]
    await batcher.close()


async def test_engine_failure_fails_every_request_of_the_batch_and_the_batcher_keeps_going():
    engine = FakeEngine()
    engine.fail = True
    batcher = make_batcher(engine, max_batch=4, delay_s=0.2)
    results = await asyncio.gather(*(batcher.submit(rows(1, i), 1) for i in range(4)), return_exceptions=True)
    assert all(isinstance(r, EngineError) for r in results)
    engine.fail = False
    assert (await batcher.submit(rows(1, 5), 1))["y"][0, 0] == 10
    await batcher.close()


async def test_full_queue_is_rejected_at_once_with_unavailable():
    engine = FakeEngine()
    engine.gate.clear()  # the first batch blocks the only instance; the rest wait behind it
    batcher = make_batcher(engine, max_batch=1, delay_s=0.0, queue=2)
    first = asyncio.create_task(batcher.submit(rows(1, 0), 1))
    await until(lambda: engine.entered == 1, "the first batch reaches the engine")
    # Behind it: one batch staged in the instance's executor, then the queue of 2.
    queued = []
    while batcher.queued < 2:
        queued.append(asyncio.create_task(batcher.submit(rows(1, len(queued)), 1)))
        await until(lambda: batcher.in_flight == 1 + len(queued), "the request is taken in")
    with pytest.raises(Unavailable, match="queue full"):
        await batcher.submit(rows(1, 9), 1)
    engine.gate.set()
    await asyncio.gather(first, *queued)
    await batcher.close()


async def test_expired_and_cancelled_requests_are_dropped_before_compute():
    engine = FakeEngine()
    engine.gate.clear()
    clock = FakeClock()
    batcher = make_batcher(engine, max_batch=1, delay_s=0.0, clock=clock)
    blocker = asyncio.create_task(batcher.submit(rows(1, 0), 1))
    await until(lambda: engine.entered == 1, "the blocker reaches the engine")
    expired = asyncio.create_task(batcher.submit(rows(1, 1), 1, timeout_s=5.0))
    cancelled = asyncio.create_task(batcher.submit(rows(1, 2), 1))
    await until(lambda: batcher.in_flight == 3, "both requests are taken in")
    clock.now += 10.0  # past the first one's deadline
    cancelled.cancel()
    engine.gate.set()
    await blocker
    with pytest.raises(DeadlineExceeded):
        await expired
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await batcher.close()
    assert engine.batches == [1]  # only the blocker ever ran


async def test_close_resolves_queued_requests_with_unavailable():
    engine = FakeEngine()
    engine.gate.clear()
    batcher = make_batcher(engine, max_batch=1, delay_s=0.0)
    running = asyncio.create_task(batcher.submit(rows(1, 0), 1))
    await until(lambda: engine.entered == 1, "the first request reaches the engine")
    next_up = asyncio.create_task(batcher.submit(rows(1, 0), 1))  # staged in the instance's executor
    await until(lambda: batcher.in_flight == 2, "the second request is staged")
    queued = asyncio.create_task(batcher.submit(rows(1, 1), 1))
    await until(lambda: batcher.queued == 1, "the third request queues")
    closing = asyncio.create_task(batcher.close())
    await until(lambda: batcher._draining, "close() starts")
    engine.gate.set()
    await closing
    await asyncio.gather(running, next_up)
    with pytest.raises(Unavailable):
        await queued


async def test_unbatched_model_runs_each_request_alone():
    engine = FakeEngine()
    batcher = make_batcher(engine, max_batch=8, delay_s=0.2, batched=False)
    await asyncio.gather(*(batcher.submit(rows(1, i), 1) for i in range(3)))
    assert engine.batches == [1, 1, 1]
    await batcher.close()


async def test_requests_with_different_shapes_are_not_mixed():
    engine = FakeEngine()
    batcher = make_batcher(engine, max_batch=8, delay_s=0.2)

    async def submit(width, value):
        inputs = {"x": np.full((1, width), value, dtype=np.float32)}
        return await batcher.submit(inputs, 1, shape_key=(("x", (width,)),))

    results = await asyncio.gather(submit(2, 1), submit(3, 2), submit(2, 3))
    assert [r["y"].shape for r in results] == [(1, 2), (1, 3), (1, 2)]
    await batcher.close()


def test_peak_tracker_remembers_the_last_window_then_forgets():
    from services.worker.batching.batcher import PeakTracker

    peak = PeakTracker(window_s=1.0, now=0.0)
    peak.observe(5, 0.1)
    peak.observe(2, 0.5)
    assert peak.peak(0.9) == 5
    assert peak.peak(1.5) == 5  # the previous window still counts
    peak.observe(1, 1.6)
    assert peak.peak(2.7) == 1
    assert peak.peak(5.0) == 0  # two idle windows: nothing remembered


async def test_a_lone_caller_waits_for_no_queue_delay():
    engine = FakeEngine()
    batcher = make_batcher(engine, max_batch=8, delay_s=30.0)
    for i in range(3):  # with a 30 s delay this would hang if the batch waited
        result = await asyncio.wait_for(batcher.submit(rows(1, i), 1), 5)
        assert result["y"][0, 0] == 2 * i
    assert engine.batches == [1, 1, 1]
    await batcher.close()


class ThreadRecordingEngine(FakeEngine):
    """FakeEngine that also records which thread ran each batch and can be slowed down."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []
        self.delay_s = 0.0

    def infer(self, inputs):
        self.threads.append(threading.get_ident())
        if self.delay_s:
            time.sleep(self.delay_s)
        return super().infer(inputs)


@pytest.fixture()
def roomy_loop_budget(monkeypatch):
    """Budgets 20× the real ones, so a test process descheduled for a few ms on a busy CI
    machine cannot look like a slow model; the rules under test are the same."""
    monkeypatch.setattr(batcher_module, "LOOP_BUDGET_S", 0.02)
    monkeypatch.setattr(batcher_module, "LOOP_LIMIT_S", 0.4)


def make_loop_batcher(engine):
    pool = [EngineInstance(engine.infer, ThreadPoolExecutor(1))]
    batcher = Batcher(pool, BatchPolicy(8, 0.0), 100, on_loop=True, name="m/1")
    batcher.start()
    return batcher


async def test_run_on_event_loop_runs_batches_on_the_loop_thread():
    engine = ThreadRecordingEngine()
    batcher = make_loop_batcher(engine)
    results = await asyncio.gather(*(batcher.submit(rows(1, i), 1) for i in range(5)))
    assert [r["y"][0, 0] for r in results] == [0, 2, 4, 6, 8]
    assert set(engine.threads) == {threading.get_ident()}
    assert batcher.on_loop
    await batcher.close()


async def test_one_slow_batch_on_the_loop_is_tolerated_a_very_slow_one_is_not(caplog, roomy_loop_budget):
    engine = ThreadRecordingEngine()
    batcher = make_loop_batcher(engine)
    loop_thread = threading.get_ident()
    engine.delay_s = batcher_module.LOOP_BUDGET_S * 3  # a preempted batch, say: the average absorbs it
    await batcher.submit(rows(1, 0), 1)
    engine.delay_s = 0.0
    for i in range(3):
        await batcher.submit(rows(1, i), 1)
    assert batcher.on_loop and set(engine.threads) == {loop_thread}
    engine.delay_s = batcher_module.LOOP_LIMIT_S * 1.5
    await batcher.submit(rows(1, 1), 1)  # still on the loop, but over the limit
    assert not batcher.on_loop
    assert "m/1: batches held the event loop" in caplog.text
    engine.delay_s = 0.0
    result = await batcher.submit(rows(1, 7), 1)
    assert result["y"][0, 0] == 14
    assert engine.threads[-1] != loop_thread, "after a slow batch, batches run on the instance thread"
    await batcher.close()


async def test_a_steadily_slow_model_leaves_the_loop_within_a_few_batches(roomy_loop_budget):
    engine = ThreadRecordingEngine()
    batcher = make_loop_batcher(engine)
    engine.delay_s = batcher_module.LOOP_BUDGET_S * 2.5
    for i in range(8):
        await batcher.submit(rows(1, i), 1)
    assert not batcher.on_loop
    assert engine.threads[0] == threading.get_ident() and engine.threads[-1] != threading.get_ident()
    await batcher.close()


async def test_while_the_instance_is_busy_a_batch_stays_open_past_its_delay():
    # The queue delay long past, the held batch still takes every row that arrives until
    # the instance is free; staging it on the delay would have split it (the 3-6 row
    # batches of a mid-weight model at 64 in flight).
    engine = FakeEngine()
    clock = FakeClock()
    batcher = make_batcher(engine, max_batch=8, delay_s=0.05, clock=clock)
    engine.gate.clear()
    first = asyncio.ensure_future(batcher.submit(rows(1, 0), 1))
    await until(lambda: engine.entered == 1, "the lone first request runs at once")
    held = [asyncio.ensure_future(batcher.submit(rows(1, i), 1)) for i in (1, 2, 3)]
    await asyncio.sleep(0.05)
    assert batcher.queued == 3 and engine.entered == 1
    clock.now += 1.0  # twenty delays
    held.append(asyncio.ensure_future(batcher.submit(rows(1, 4), 1)))
    await asyncio.sleep(0.05)
    assert batcher.queued == 4 and engine.entered == 1, "held, not staged behind the running batch"
    engine.gate.set()
    results = await asyncio.gather(first, *held)
    assert [r["y"][0, 0] for r in results] == [0, 2, 4, 6, 8]
    assert engine.batches == [1, 4]
    await batcher.close()


async def test_a_full_batch_is_staged_behind_the_running_one():
    engine = FakeEngine()
    clock = FakeClock()
    batcher = make_batcher(engine, max_batch=4, delay_s=30.0, clock=clock)
    engine.gate.clear()
    first = asyncio.ensure_future(batcher.submit(rows(1, 0), 1))
    await until(lambda: engine.entered == 1, "the first request runs")
    staged = [asyncio.ensure_future(batcher.submit(rows(1, i), 1)) for i in range(1, 6)]
    await until(lambda: batcher.queued == 1, "a full batch of 4 leaves the queue while the instance is busy")
    clock.now += 31.0  # the last request goes once the instance is free and its delay has passed
    engine.gate.set()
    await asyncio.gather(first, *staged)
    assert engine.batches == [1, 4, 1]
    await batcher.close()


async def test_a_batch_goes_to_the_instance_that_is_free():
    engine = FakeEngine()
    other = FakeEngine()
    pool = [EngineInstance(engine.infer, ThreadPoolExecutor(1)), EngineInstance(other.infer, ThreadPoolExecutor(1))]
    batcher = Batcher(pool, BatchPolicy(8, 0.0), 100, clock=FakeClock())
    batcher.start()
    engine.gate.clear()
    first = asyncio.ensure_future(batcher.submit(rows(1, 0), 1))
    await until(lambda: engine.entered == 1, "the first instance is busy")
    second = await asyncio.wait_for(batcher.submit(rows(1, 1), 1), 5)
    assert second["y"][0, 0] == 2 and other.batches == [1]
    engine.gate.set()
    await first
    await batcher.close()
