"""A batcher's queue sized in time: the wait a new request can expect, and the refusal.

Counting requests says little about waiting: 64 queued rows are one batch for a model that
takes 64 at a time and 64 batches for one that takes one. So the batcher refuses on time
instead (as Triton's queue policy does with ``default_timeout_microseconds``, but before
queueing rather than after): with ``queued_rows`` waiting and ``running`` batches handed to
its instances, a new request waits for

    (queued_rows // max_batch_rows full batches ahead + running batches still to finish,
     less half of one in progress) / instances × the observed batch time,

and joins the partial batch at the back. It is refused (``Overloaded``: UNAVAILABLE,
retryable) when that wait is over the version's ``max_queue_wait_s``, or when the wait plus
its own batch is longer than the request's remaining deadline. Pure arithmetic, no clock:
the batcher feeds it batch times and asks before queueing.
"""

from __future__ import annotations

from services.common.admission import REFUSED, Overloaded

#: Weight of the newest batch in the batch-time average.
EWMA_WEIGHT = 0.1
#: Batches observed before the estimate is trusted for refusals.
MIN_BATCHES = 3


class QueueTime:
    def __init__(
        self, max_batch_rows: int, instances: int, max_queue_wait_s: float = 0.0, deadline_aware: bool = True
    ) -> None:
        self.max_batch_rows = max(1, max_batch_rows)
        self.instances = max(1, instances)
        self.max_queue_wait_s = max_queue_wait_s
        self.deadline_aware = deadline_aware
        #: Moving average of one batch's wall time on its instance (seconds).
        self.batch_s = 0.0
        self.batches = 0
        self.refused = 0
        self._counter = REFUSED.labels("worker", "wait")

    def observe_batch(self, seconds: float) -> None:
        if self.batches == 0:
            self.batch_s = seconds
        else:
            self.batch_s += EWMA_WEIGHT * (seconds - self.batch_s)
        self.batches += 1

    def wait_s(self, queued_rows: int, running: int) -> float:
        """Expected wait before a new request's batch starts (0 until MIN_BATCHES were seen)."""
        if self.batches < MIN_BATCHES:
            return 0.0
        ahead = queued_rows // self.max_batch_rows + max(running - 0.5, 0.0)
        return ahead / self.instances * self.batch_s

    def admit(self, queued_rows: int, running: int, timeout_s: float | None, name: str = "") -> None:
        """Raise Overloaded when the expected wait is over the bound or the deadline."""
        if not self.max_queue_wait_s and not (self.deadline_aware and timeout_s is not None):
            return
        wait = self.wait_s(queued_rows, running)
        if wait <= 0:
            return
        what = f" for {name}" if name else ""
        if self.max_queue_wait_s and wait > self.max_queue_wait_s:
            self._refuse()
            raise Overloaded(
                f"expected queue wait {wait * 1000:.0f} ms{what} is over the {self.max_queue_wait_s * 1000:.0f} ms "
                "bound; retry on another worker"
            )
        if self.deadline_aware and timeout_s is not None and wait + self.batch_s > timeout_s:
            self._refuse()
            raise Overloaded(
                f"expected wait {(wait + self.batch_s) * 1000:.0f} ms{what} is longer than the "
                f"{max(timeout_s, 0) * 1000:.0f} ms left of the request's deadline"
            )

    def _refuse(self) -> None:
        self.refused += 1
        self._counter.inc()
