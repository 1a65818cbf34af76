"""GCRA rate limits: the Lua script against a real redis-server, and the local fallback."""

from __future__ import annotations

import pytest

from services.router.limiter import LocalGcra, effective_burst


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_local_gcra_burst_then_rate():
    clock = FakeClock()
    gcra = LocalGcra(clock)
    assert [gcra.acquire("k", 10, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = gcra.acquire("k", 10, 3)
    assert wait == pytest.approx(0.1)
    clock.now += 0.1
    assert gcra.acquire("k", 10, 3) == 0.0
    assert gcra.acquire("k", 10, 3) > 0
    assert gcra.acquire("other", 10, 3) == 0.0  # buckets are independent


def test_local_gcra_admits_at_most_burst_plus_rate_times_elapsed():
    clock = FakeClock()
    gcra = LocalGcra(clock)
    admitted = 0
    for _ in range(1000):  # 10 s of attempts every 10 ms at a 50/s limit
        admitted += gcra.acquire("k", 50, 5) == 0.0
        clock.now += 0.01
    assert 5 + 50 * 9.99 - 1 <= admitted <= 5 + 50 * 10


def test_effective_burst():
    assert effective_burst(50, 0) == 50
    assert effective_burst(0.5, 0) == 1
    assert effective_burst(2.5, 0) == 3
    assert effective_burst(50, 7) == 7
