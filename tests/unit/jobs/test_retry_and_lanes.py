"""Backoff bounds, the retry-after hint, shards, and the exclusive lane used to isolate bad rows."""

from __future__ import annotations

import asyncio
import random

import pytest

from services.jobs.batch import Lanes, parse_shard
from services.jobs.retry import RetryPolicy, retry_after_s


def test_backoff_grows_to_its_cap_with_jitter():
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0)
    rng = random.Random(1)
    assert 0.05 <= policy.backoff_s(1, rng) <= 0.1
    assert 0.5 <= policy.backoff_s(10, rng) <= 1.0


def test_retry_after_hint():
    assert retry_after_s((("retry-after-ms", "250"),)) == 0.25
    assert retry_after_s((("other", "1"),)) is None
    assert retry_after_s((("retry-after-ms", "soon"),)) is None


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


async def test_an_exclusive_call_runs_alone():
    lanes, log = Lanes(), []

    async def shared(name: str) -> None:
        async with lanes.shared():
            log.append(f"+{name}")
            await asyncio.sleep(0.01)
            log.append(f"-{name}")

    async def exclusive() -> None:
        async with lanes.exclusive():
            log.append("+X")
            await asyncio.sleep(0.01)
            log.append("-X")

    first = [asyncio.create_task(shared(n)) for n in "ab"]
    await asyncio.sleep(0)
    alone = asyncio.create_task(exclusive())
    await asyncio.sleep(0)
    late = asyncio.create_task(shared("c"))
    await asyncio.gather(*first, alone, late)
    x = log.index("+X")
    assert log[x + 1] == "-X"  # nothing ran inside the exclusive call
    assert {"-a", "-b"} <= set(log[:x]) and log.index("+c") > x  # it waited for a, b; c waited for it
