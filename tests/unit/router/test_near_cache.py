"""The router's in-process copy of cache entries: bounded by bytes, least recently used out, TTL kept."""

from __future__ import annotations

from services.router.near_cache import NearCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_with_their_ttl():
    clock = Clock()
    near = NearCache(1000, clock=clock)
    near.put("a", b"x" * 10, ttl_s=5)
    clock.now += 4.9
    assert near.get("a") == b"x" * 10
    clock.now += 0.2
    assert near.get("a") is None
    assert near.size_bytes == 0


def test_the_least_recently_used_entry_goes_first_when_bytes_run_out():
    near = NearCache(100)
    near.put("a", b"a" * 25, 60)
    near.put("b", b"b" * 25, 60)
    near.put("c", b"c" * 25, 60)
    assert near.get("a") is not None  # a is now the most recently used
    near.put("d", b"d" * 25, 60)
    near.put("e", b"e" * 25, 60)  # over 100 bytes: b, the least recently used, goes
    assert near.get("b") is None
    assert [near.get(k) is not None for k in "acde"] == [True, True, True, True]
    assert near.size_bytes == 100


def test_replacing_an_entry_counts_its_bytes_once_and_big_values_are_not_kept():
    near = NearCache(100)
    near.put("a", b"a" * 20, 60)
    near.put("a", b"A" * 10, 60)
    assert near.get("a") == b"A" * 10 and near.size_bytes == 10
    near.put("big", b"z" * 26, 60)  # over a quarter of the budget: one value must not flush the rest
    assert near.get("big") is None and near.get("a") is not None


def test_zero_bytes_or_zero_ttl_keeps_nothing():
    assert not NearCache(0).enabled
    near = NearCache(100)
    near.put("a", b"a", 0)
    assert near.get("a") is None
