"""Stopping retry loops whose cancel a library swallowed (services/common/background.py).

The loops here stand in for redis-py on Python 3.11, whose ``asyncio.wait_for`` can turn a
cancel into the connection error it was racing with (tests/integration/registry/
test_store_uvloop.py shows it against a real socket).
"""

from __future__ import annotations

import asyncio

from services.common import background


class Swallower:
    """A network call that, the first ``times`` times it is cancelled, raises OSError instead."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.lost = 0

    async def call(self) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.lost < self.times:
                self.lost += 1
                raise OSError("connection reset") from None
            raise


async def _retry_loop(io: Swallower, *, check: bool) -> None:
    """A follow loop: an OSError is an outage, retried after a pause."""
    while True:
        try:
            await io.call()
        except OSError:
            if check:
                background.raise_if_cancelled()
            await asyncio.sleep(0.01)


async def test_stop_ends_a_loop_whose_first_cancel_was_swallowed() -> None:
    io = Swallower(1)
    task = asyncio.create_task(_retry_loop(io, check=False))
    await asyncio.sleep(0)
    # A single cancel and a wait (what close() did) would wait for ever here.
    assert await asyncio.wait_for(background.stop(task, timeout_s=30), 10) is True
    assert io.lost == 1 and task.cancelled()


async def test_a_loop_that_checks_ends_at_the_first_cancel() -> None:
    io = Swallower(1)
    task = asyncio.create_task(_retry_loop(io, check=True))
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done == {task} and task.cancelled() and io.lost == 1


async def test_stop_gives_up_at_its_bound_on_a_task_that_never_ends() -> None:
    io = Swallower(10**9)
    task = asyncio.create_task(_retry_loop(io, check=False))
    await asyncio.sleep(0)
    assert await asyncio.wait_for(background.stop(task, timeout_s=0.2), 10) is False
    assert not task.done() and io.lost >= 1
    io.times = 0  # let the next cancel through
    assert await asyncio.wait_for(background.stop(task), 10) is True


async def test_stop_takes_none_and_finished_tasks() -> None:
    assert await background.stop(None) is True
    finished = asyncio.create_task(asyncio.sleep(0))
    await finished
    assert await background.stop(finished) is True
