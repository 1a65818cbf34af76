"""shunter_worker_rows_per_instance: a gauge of rows queued plus running per engine instance."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from prometheus_client import REGISTRY

from services.worker import metrics
from services.worker.batching.batcher import Batcher, EngineInstance
from services.worker.batching.policy import BatchPolicy


class GatedEngine:
    """Holds every batch until the test opens the gate, so rows stay queued or running."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def infer(self, inputs):
        self.gate.wait(5)
        return {"y": inputs["x"]}


def gauge(model: str, version: str) -> float | None:
    return REGISTRY.get_sample_value(metrics.ROWS_PER_INSTANCE.NAME, {"model": model, "version": version})


async def settle(condition) -> None:
    """Yield to the batch loop until ``condition()`` holds (bounded: 2 s)."""
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.005)


async def test_the_gauge_counts_rows_not_requests_per_instance_and_falls_back_to_zero():
    engine = GatedEngine()
    instances = [EngineInstance(engine.infer, ThreadPoolExecutor(1)) for _ in range(2)]
    batcher = Batcher(instances, BatchPolicy(max_batch_size=4, max_queue_delay_s=0.0), 100)
    batcher.start()
    metrics.ROWS_PER_INSTANCE.track("gauge-test", "7", batcher)
    try:
        assert gauge("gauge-test", "7") == 0.0
        sizes = [3, 1, 4, 2, 2]  # 12 rows in 5 requests, over 2 instances
        calls = [asyncio.create_task(batcher.submit({"x": np.zeros((n, 1), np.float32)}, n)) for n in sizes]
        await settle(lambda: batcher.in_flight == len(sizes))
        # Some rows run (held at the gate), the rest wait in the queue: all of them count.
        assert gauge("gauge-test", "7") == 12 / 2
        engine.gate.set()
        await asyncio.gather(*calls)
        assert gauge("gauge-test", "7") == 0.0
    finally:
        metrics.ROWS_PER_INSTANCE.untrack(batcher)
        engine.gate.set()
        await batcher.close()
    # An unloaded version leaves no stale series behind.
    assert gauge("gauge-test", "7") is None


def test_the_gauge_is_exported_as_a_gauge():
    families = {f.name: f for f in REGISTRY.collect()}
    assert families[metrics.ROWS_PER_INSTANCE.NAME].type == "gauge"
