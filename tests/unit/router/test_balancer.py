"""Power-of-two-choices balancing, ejection and the one retry, with fake replicas."""

from __future__ import annotations

import random
import time
from collections import Counter

import grpc
import pytest

from services.common.errors import DeadlineExceeded
from services.router.balancer import Balancer
from services.router.worker_client import Forward, UpstreamError, forward_infer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now



class FakeWorker:
    """Stands in for a WorkerTransport: answers, or fails with a given status."""

    def __init__(self, address: str, fail_with: grpc.StatusCode | None = None) -> None:
        self.address = address
        self.fail_with = fail_with
        self.calls = 0
        self.seen_timeouts: list[float] = []

    async def infer(self, forward: Forward, timeout_s: float) -> bytes:
        raw = forward.raw
        self.calls += 1
        self.seen_timeouts.append(timeout_s)
        if self.fail_with is not None:
            raise UpstreamError(self.fail_with, "fake failure")
        return b"ok:" + self.address.encode() + b":" + raw


def make(workers: dict[str, FakeWorker], clock=None, **kwargs) -> Balancer:
    return Balancer(lambda a: workers[a], clock=clock or FakeClock(), rng=random.Random(1), **kwargs)


def test_picks_less_loaded_of_two():
    workers = {a: FakeWorker(a) for a in ("a", "b")}
    balancer = make(workers)
    balancer.replica("a").outstanding = 5
    assert all(balancer.pick(["a", "b"]).address == "b" for _ in range(20))


def test_spreads_load_when_equal():
    workers = {a: FakeWorker(a) for a in "abcd"}
    balancer = make(workers)
    counts = Counter(balancer.pick(list("abcd")).address for _ in range(4000))
    assert set(counts) == set("abcd")
    assert min(counts.values()) > 600


def test_never_picks_the_most_loaded_of_many():
    workers = {a: FakeWorker(a) for a in "abc"}
    balancer = make(workers)
    balancer.replica("c").outstanding = 10
    assert "c" not in {balancer.pick(list("abc")).address for _ in range(200)}


def test_ejection_after_repeated_failures_and_cooloff():
    clock = FakeClock()
    workers = {a: FakeWorker(a) for a in "ab"}
    balancer = make(workers, clock, eject_after=3, cooloff_s=5.0)
    a = balancer.replica("a")
    for _ in range(2):
        balancer.failed(a)
    assert balancer.healthy(["a", "b"]) == ["a", "b"]
    balancer.succeeded(a)  # a success resets the count
    for _ in range(3):
        balancer.failed(a)
    assert balancer.healthy(["a", "b"]) == ["b"]
    assert {balancer.pick(["a", "b"]).address for _ in range(50)} == {"b"}
    # With every worker ejected, an ejected one is still tried rather than failing.
    assert balancer.pick(["a"]).address == "a"
    clock.now += 5.0
    assert balancer.healthy(["a", "b"]) == ["a", "b"]


def test_retain_forgets_departed_workers():
    workers = {a: FakeWorker(a) for a in "abc"}
    balancer = make(workers)
    for a in "abc":
        balancer.replica(a)
    gone = balancer.retain(["a"])
    assert sorted(r.address for r in gone) == ["b", "c"]
    assert list(balancer.replicas) == ["a"]


async def test_forward_retries_once_on_another_worker():
    workers = {"dead": FakeWorker("dead", grpc.StatusCode.UNAVAILABLE), "live": FakeWorker("live")}
    balancer = make(workers)
    for _ in range(10):
        response = await forward_infer(balancer, ["dead", "live"], Forward(b"x", time.monotonic() + 5))
        assert response == b"ok:live:x"
    assert all(r.outstanding == 0 for r in balancer.replicas.values())
    # The dead worker was ejected after 3 failures, so it stopped being tried.
    assert workers["dead"].calls == 3


async def test_forward_no_retry_for_other_codes_and_passes_code_on():
    workers = {"bad": FakeWorker("bad", grpc.StatusCode.INVALID_ARGUMENT), "live": FakeWorker("live")}
    balancer = make(workers)
    with pytest.raises(UpstreamError) as info:
        await forward_infer(balancer, ["bad"], Forward(b"x", time.monotonic() + 5))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert workers["bad"].calls == 1


async def test_forward_gives_up_after_one_retry():
    workers = {a: FakeWorker(a, grpc.StatusCode.UNAVAILABLE) for a in "abc"}
    balancer = make(workers, eject_after=100)
    with pytest.raises(UpstreamError) as info:
        await forward_infer(balancer, list("abc"), Forward(b"x", time.monotonic() + 5))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert sum(w.calls for w in workers.values()) == 2


async def test_forward_passes_remaining_deadline_and_respects_it():
    workers = {"a": FakeWorker("a")}
    balancer = make(workers)
    await forward_infer(balancer, ["a"], Forward(b"x", time.monotonic() + 2.0))
    assert 0 < workers["a"].seen_timeouts[0] <= 2.0
    with pytest.raises(DeadlineExceeded):
        await forward_infer(balancer, ["a"], Forward(b"x", time.monotonic() - 0.1))
