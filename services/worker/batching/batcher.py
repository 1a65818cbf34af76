"""The async shell around the batching policy: a bounded queue, a loop, instance pool.

One ``Batcher`` per model version. ``submit`` enqueues a request (or rejects it at once
with UNAVAILABLE when the queue is full or the batcher is draining) and awaits its rows
of the result. The loop asks ``policy.decide`` what to send, telling it whether an engine
instance is free to start the batch now, hands the batch to the least-loaded instance,
and runs it on that instance's own thread (concatenation, the engine call
and the split all happen there, off the event loop; a version configured with
``run_on_event_loop`` runs them on the loop instead, until its batches hold the loop too
long: LOOP_BUDGET_S on average or LOOP_LIMIT_S once). Every path resolves every waiting
future: results, the batch's error, DEADLINE_EXCEEDED for expired requests, and
UNAVAILABLE when the batcher closes with work still queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from services.common import tracing
from services.common.errors import DeadlineExceeded, EngineError, ShunterError, Unavailable
from services.worker.batching.policy import BatchPolicy, Dispatch, Wait, decide
from services.worker.batching.queue_time import QueueTime

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
#: Batches handed to one instance at once: one running on its thread and, when it cannot
#: grow any more (policy.decide with instance_free=False), the next one staged in its
#: executor, so the thread goes from one batch to the next without a round trip through
#: the event loop.
SLOTS_PER_INSTANCE = 2
#: ``run_on_event_loop``: the longest batches may hold the event loop, on average (an
#: exponential moving average, so one preempted batch does not count as a slow model), and
#: the longest any one batch may. Past either, the version goes back to its instance
#: threads for the rest of its life.
LOOP_BUDGET_S = 0.001
LOOP_LIMIT_S = 0.02
_LOOP_EWMA_WEIGHT = 0.2
#: Runs one batch of concatenated inputs; returns outputs with the batch's rows first.
InferFn = Callable[[Arrays], Arrays]


@dataclass(slots=True)
class PendingRequest:
    inputs: Arrays
    rows: int
    enqueued_at: float
    #: Monotonic time after which the caller no longer wants the answer (None: never).
    deadline: float | None
    future: asyncio.Future
    #: Non-batch shapes of the inputs when the model has variable dimensions; only
    #: requests with equal keys can be concatenated. None: always compatible.
    shape_key: tuple | None = None
    #: The request's span and enqueue time when it is traced (tracing.queued()).
    trace: tracing.Queued | None = None


@dataclass(slots=True)
class BatchTiming:
    """What one executed batch cost, for statistics and metrics (all in nanoseconds)."""

    rows: int
    requests: int
    input_ns: int
    infer_ns: int
    output_ns: int
    queue_ns: list[int] = field(default_factory=list)
    #: The batch's wall time on its instance, from the dead-request check to the split.
    wall_s: float = 0.0
    #: The batching rule that sent it (policy.REASONS).
    reason: str = ""


@dataclass(slots=True)
class EngineInstance:
    """One engine instance and the single thread that runs it."""

    infer: InferFn
    executor: Executor


class PeakTracker:
    """The most rows in flight at once over the last one to two windows.

    Feeds the policy's "waiting cannot grow the batch" rule: when everything that has
    recently been in flight together is already queued, the batch goes at once.
    """

    def __init__(self, window_s: float, now: float) -> None:
        self._window_s = window_s
        self._start = now
        self._current = 0
        self._previous = 0

    def _roll(self, now: float) -> None:
        elapsed = now - self._start
        if elapsed >= self._window_s:
            self._previous = self._current if elapsed < 2 * self._window_s else 0
            self._current = 0
            self._start = now

    def observe(self, rows: int, now: float) -> None:
        self._roll(now)
        if rows > self._current:
            self._current = rows

    def peak(self, now: float) -> int:
        self._roll(now)
        return max(self._current, self._previous)


class Batcher:
    def __init__(
        self,
        instances: list[EngineInstance],
        policy: BatchPolicy,
        max_queue_size: int,
        *,
        batched: bool = True,
        on_batch: Callable[[BatchTiming], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_loop: bool = False,
        name: str = "",
        max_queue_wait_s: float = 0.0,
        deadline_aware: bool = True,
    ) -> None:
        if not instances:
            raise ValueError("a batcher needs at least one engine instance")
        self._policy = policy
        self._max_queue_size = max_queue_size
        #: False for models without a batch dimension: requests are never concatenated.
        self._batched = batched
        self._on_batch = on_batch
        self._clock = clock
        #: Run batches on the event loop (see LOOP_BUDGET_S); turned off for good by a slow one.
        self._on_loop = on_loop
        self._loop_ewma_s = 0.0
        self._name = name
        self._queue: deque[PendingRequest] = deque()
        #: Rows in ``_queue`` (kept as requests are queued and popped).
        self._queued_rows = 0
        #: The queue sized in time: refuses before queueing (queue_time.py).
        self.queue_time = QueueTime(
            policy.max_batch_size if batched else 1, len(instances), max_queue_wait_s, deadline_aware
        )
        #: The batch loop's wait for the next arrival or a finished batch (None while it is
        #: not waiting). A bare future and call_later cost a fraction of asyncio.Event plus
        #: wait_for, which the loop would otherwise pay on most batches.
        self._arrival: asyncio.Future[None] | None = None
        self._instances = instances
        #: Batches handed to each instance and not yet finished (at most SLOTS_PER_INSTANCE).
        self._load = [0] * len(instances)
        self._running: set[asyncio.Task] = set()
        self._draining = False
        self._running_requests = 0
        #: Rows submitted and not yet answered (queued, running or being returned).
        self._in_flight_rows = 0
        self._peak = PeakTracker(window_s=1.0, now=clock())
        self._loop_task: asyncio.Task | None = None
        #: Set by start(); submit() and the loop run only after it.
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    @property
    def on_loop(self) -> bool:
        """Whether batches currently run on the event loop (False once one was too slow)."""
        return self._on_loop

    @property
    def in_flight(self) -> int:
        """Requests queued or running."""
        return len(self._queue) + self._running_requests

    @property
    def queued(self) -> int:
        """Requests waiting for an instance (not yet in a batch)."""
        return len(self._queue)

    @property
    def rows_per_instance(self) -> float:
        """Rows submitted and not yet answered, per engine instance: the autoscaling gauge."""
        return self._in_flight_rows / len(self._instances)

    def start(self) -> None:
        # Kept: asyncio.get_running_loop() costs a getpid() system call on Python 3.11, and
        # submit() would pay it on every request.
        self._loop = asyncio.get_running_loop()
        self._loop_task = self._loop.create_task(self._run_loop(), name="batcher")

    async def submit(
        self, inputs: Arrays, rows: int, timeout_s: float | None = None, shape_key: tuple | None = None
    ) -> Arrays:
        """Queue one request and wait for its rows of the batch result."""
        if self._draining:
            raise Unavailable("model version is unloading or the worker is shutting down")
        if len(self._queue) >= self._max_queue_size:
            raise Unavailable(f"queue full ({self._max_queue_size} requests waiting); retry on another worker")
        self.admit(timeout_s)
        now = self._clock()
        future = self._loop.create_future()
        deadline = now + timeout_s if timeout_s is not None else None
        self._queue.append(PendingRequest(inputs, rows, now, deadline, future, shape_key, tracing.queued()))
        self._queued_rows += rows
        self._in_flight_rows += rows
        self._peak.observe(self._in_flight_rows, now)
        _resolve(self._arrival)
        # If the caller is cancelled, the future is cancelled too and the loop drops it
        # before compute.
        try:
            return await future
        finally:
            self._in_flight_rows -= rows

    def admit(self, timeout_s: float | None) -> None:
        """Refuse now (Overloaded) a request this queue cannot serve in time (queue_time.py).

        ``submit`` asks too; the servicer asks first, before decoding the request, so a
        refusal costs as little as it can.
        """
        self.queue_time.admit(self._queued_rows, len(self._running), timeout_s, self._name)

    async def drain(self) -> None:
        """Refuse new requests and wait until everything queued or running has finished."""
        self._draining = True
        while self._queue or self._running:
            if self._running:
                await asyncio.wait(set(self._running))
            else:
                await asyncio.sleep(0.001)

    async def close(self) -> None:
        """Stop the loop; anything still queued gets UNAVAILABLE."""
        self._draining = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._running:
            await asyncio.wait(set(self._running))
        while self._queue:
            pending = self._pop()
            if not pending.future.done():
                pending.future.set_exception(Unavailable("model version was unloaded"))
        for instance in self._instances:
            instance.executor.shutdown(wait=True)

    def _pop(self) -> PendingRequest:
        pending = self._queue.popleft()
        self._queued_rows -= pending.rows
        return pending

    def _drop_dead_head(self, now: float) -> None:
        """Drop cancelled and expired requests at the head of the queue."""
        queue = self._queue
        while queue:
            head = queue[0]
            if head.future.done():
                self._pop()
            elif head.deadline is not None and head.deadline <= now:
                self._pop()
                head.future.set_exception(DeadlineExceeded("deadline passed while queued"))
            else:
                return

    async def _run_loop(self) -> None:
        while True:
            index, batch, reason = await self._next_batch()
            self._load[index] += 1
            self._running_requests += len(batch)
            if self._on_loop:
                # Runs to completion without yielding: no task to create.
                await self._execute(index, batch, reason)
                continue
            task = asyncio.create_task(self._execute(index, batch, reason))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _least_loaded(self) -> int:
        load = self._load
        best = 0
        for index in range(1, len(load)):
            if load[index] < load[best]:
                best = index
        return best

    async def _next_batch(self) -> tuple[int, list[PendingRequest], str]:
        """The instance to run the next batch on, the batch (popped from the queue), and why it went."""
        policy = self._policy
        limit = policy.max_batch_size
        queue = self._queue
        while True:
            now = self._clock()
            self._drop_dead_head(now)
            if not queue:
                await self._wait_for_arrival(None)
                continue
            index = self._least_loaded()
            load = self._load[index]
            if load >= SLOTS_PER_INSTANCE:
                await self._wait_for_arrival(None)  # woken by an arrival or a finished batch
                continue
            if not self._batched:
                return index, [self._pop()], "unbatched"
            head_key = queue[0].shape_key
            rows = []
            total = 0
            for pending in queue:
                if pending.shape_key != head_key:
                    break
                rows.append(pending.rows)
                total += pending.rows
                if total > limit:  # the policy looks no further than one request past a full batch
                    break
            decision = decide(rows, now - queue[0].enqueued_at, policy, self._peak.peak(now), load == 0)
            if isinstance(decision, Wait) and len(rows) < len(queue) and total <= limit:
                # The next request cannot join this batch: waiting would not grow it.
                decision = Dispatch(len(rows), total, "incompatible")
            if isinstance(decision, Dispatch):
                return index, [self._pop() for _ in range(decision.count)], decision.reason
            if isinstance(decision, Wait):
                await self._wait_for_arrival(decision.seconds)

    async def _wait_for_arrival(self, timeout_s: float | None) -> None:
        """Until submit() queues a request, a batch finishes, or ``timeout_s`` passes (None: no limit)."""
        loop = self._loop
        waiter = self._arrival = loop.create_future()
        timer = loop.call_later(timeout_s, _resolve, waiter) if timeout_s is not None else None
        try:
            await waiter
        finally:
            self._arrival = None
            if timer is not None:
                timer.cancel()

    async def _execute(self, index: int, batch: list[PendingRequest], reason: str) -> None:
        loop = self._loop
        instance = self._instances[index]
        try:
            try:
                if self._on_loop:
                    ran, timing = self._run_on_loop(instance, batch)
                else:
                    ran, timing = await loop.run_in_executor(
                        instance.executor, _run_batch, instance.infer, batch, self._batched, self._clock
                    )
            except ShunterError as exc:
                self._fail(batch, exc)
                return
            except Exception as exc:
                logger.exception("batch of %d rows failed", sum(p.rows for p in batch))
                self._fail(batch, EngineError(f"model execution failed: {type(exc).__name__}"))
                return
            for pending, result in zip(batch, ran, strict=True):
                if pending.future.done():
                    continue
                if result is None:
                    pending.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                else:
                    pending.future.set_result(result)
            if timing is not None:
                timing.reason = reason
                self.queue_time.observe_batch(timing.wall_s)
                if self._on_batch is not None:
                    self._on_batch(timing)
                if tracing.enabled():
                    compute_ns = timing.input_ns + timing.infer_ns + timing.output_ns
                    tracing.record_batch([p.trace for p in batch], timing.rows, compute_ns)
        finally:
            self._running_requests -= len(batch)
            self._load[index] -= 1
            # A free instance can change the decision of a batch held back while all were busy.
            _resolve(self._arrival)

    def _run_on_loop(
        self, instance: EngineInstance, batch: list[PendingRequest]
    ) -> tuple[list[Arrays | None], BatchTiming | None]:
        """_run_batch right here, on the loop; slow batches end that for good (LOOP_BUDGET_S)."""
        start = time.perf_counter()
        try:
            return _run_batch(instance.infer, batch, self._batched, self._clock)
        finally:
            took = time.perf_counter() - start
            self._loop_ewma_s += _LOOP_EWMA_WEIGHT * (took - self._loop_ewma_s)
            if took > LOOP_LIMIT_S or self._loop_ewma_s > LOOP_BUDGET_S:
                self._on_loop = False
                logger.warning(
                    "%s: batches held the event loop for %.2f ms (this one; %.2f ms on average, budget "
                    "%.2f ms); running them on the instance threads from now on",
                    self._name or "batcher",
                    took * 1000,
                    self._loop_ewma_s * 1000,
                    LOOP_BUDGET_S * 1000,
                )

    @staticmethod
    def _fail(batch: list[PendingRequest], error: ShunterError) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _run_batch(
    infer: InferFn, batch: list[PendingRequest], batched: bool, clock: Callable[[], float]
) -> tuple[list[Arrays | None], BatchTiming | None]:
    """On the instance thread: drop dead requests, concatenate rows, run, split rows back.

    Requests cancelled or past their deadline are checked here, right before compute,
    since a batch may wait in the executor behind the one running. Their result is None
    (the loop answers DEADLINE_EXCEEDED, or nothing for a cancelled call). Reading
    ``future.done()`` from this thread is a benign race: at worst one cancelled request
    is computed.
    """
    start = clock()
    live_index = [
        i
        for i, p in enumerate(batch)
        if not p.future.done() and (p.deadline is None or p.deadline > start)
    ]
    results: list[Arrays | None] = [None] * len(batch)
    if not live_index:
        return results, None
    live = [batch[i] for i in live_index]
    t0 = time.perf_counter_ns()
    if len(live) == 1:
        inputs = live[0].inputs
    else:
        names = live[0].inputs.keys()
        inputs = {name: _concat([p.inputs[name] for p in live]) for name in names}
    t1 = time.perf_counter_ns()
    outputs = infer(inputs)
    t2 = time.perf_counter_ns()
    total_rows = sum(p.rows for p in live)
    if len(live) == 1:
        results[live_index[0]] = outputs
    else:
        for name, array in outputs.items():
            if array.shape[:1] != (total_rows,):
                raise EngineError(
                    f"engine returned {array.shape[0] if array.ndim else 0} rows for output '{name}', "
                    f"expected {total_rows}"
                )
        offset = 0
        for index, pending in zip(live_index, live, strict=True):
            end = offset + pending.rows
            results[index] = {name: array[offset:end] for name, array in outputs.items()}
            offset = end
    t3 = time.perf_counter_ns()
    timing = BatchTiming(
        rows=total_rows if batched else 1,
        requests=len(live),
        input_ns=t1 - t0,
        infer_ns=t2 - t1,
        output_ns=t3 - t2,
        queue_ns=[int((start - p.enqueued_at) * 1e9) for p in live],
        wall_s=clock() - start,
    )
    return results, timing


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate along the batch dimension (non-batch shapes are equal: see shape_key)."""
    return np.concatenate(arrays, axis=0)
