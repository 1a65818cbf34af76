"""Stopping background loops that talk to the network, without hanging shutdown.

A loop that retries on connection errors (the registry following Redis, the rollout
controller, the routers' statistics flush) ends only if the ``CancelledError`` reaches
it. On Python 3.11 libraries can turn a cancellation into an ordinary error: redis-py
writes through ``asyncio.wait_for``, which returns the inner result when the inner write
fails in the same step as the cancel (a Redis that resets connections does exactly
that), so the loop sees ``ConnectionError``, takes it for an outage and retries for ever
while ``close()`` waits on it; SIGTERM hangs. ``Task.cancelling()`` still says that a
cancel was asked for, so such loops call ``raise_if_cancelled()`` where they swallow
errors, and ``stop()`` cancels again, within a bound, in case one does not.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger(__name__)

#: How long ``stop()`` waits between cancels; a cancelled loop's own clean-up (closing a
#: pub/sub connection without waiting on the peer) takes far less.
RECANCEL_S = 0.5


def raise_if_cancelled() -> None:
    """Raise CancelledError when this task was cancelled and the cancel was swallowed.

    For ``except`` clauses of retry loops: the error being handled may be a cancellation
    that a library turned into a connection error.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop(task: asyncio.Task[object] | None, *, timeout_s: float = 5.0) -> bool:
    """Cancel ``task`` and wait for it to end, at most ``timeout_s``; -> whether it ended.

    Cancels again every ``RECANCEL_S`` while it runs, since one cancel can be lost (see
    the module docstring); a task still running at the bound is left, with a warning,
    rather than blocking shutdown. Its result or exception is not raised.
    """
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            logger.warning("background task %s did not stop within %.1f s; leaving it", task.get_name(), timeout_s)
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(RECANCEL_S, remaining))
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
    return True


__all__ = ["RECANCEL_S", "raise_if_cancelled", "stop"]
