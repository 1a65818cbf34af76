"""Latency-aware choice (peak-EWMA), latency outlier ejection, the per-worker cap, and
how forward_infer treats admission refusals and hung workers; fake replicas, fake clock."""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections import Counter

import grpc
import pytest

from services.common.admission import OVERLOAD_PREFIX, Overloaded
from services.router.balancer import Balancer
from services.router.worker_client import Forward, UpstreamError, forward_infer

from .test_balancer import FakeClock, FakeWorker


def simulate(
    latency: dict[str, float], clients: int, requests: int, shared: bool = False, **kwargs
) -> tuple[Counter, Balancer]:
    """Closed-loop clients against workers with fixed latencies; picks per worker.

    ``shared``: a worker serves one request at a time, so a request's latency is its base
    latency × the requests the worker holds (its queue).
    """
    clock = FakeClock()
    balancer = Balancer(clock=clock, rng=random.Random(7), **kwargs)
    addresses = sorted(latency)
    picks: Counter = Counter()
    events: list[tuple[float, int, str]] = []
    sequence = 0

    def send() -> None:
        nonlocal sequence
        replica = balancer.pick(addresses)
        replica.outstanding += 1
        picks[replica.address] += 1
        sequence += 1
        took = latency[replica.address] * (replica.outstanding if shared else 1)
        heapq.heappush(events, (clock.now + took, sequence, replica.address, took))

    for _ in range(clients):
        send()
    while sum(picks.values()) < requests:
        clock.now, _, address, took = heapq.heappop(events)
        replica = balancer.replica(address)
        replica.outstanding -= 1
        balancer.observe(replica, took, addresses)
        send()
    return picks, balancer


def test_a_worker_50ms_slower_gets_a_small_share():
    picks, _ = simulate({"fast": 0.002, "slow": 0.052}, clients=4, requests=4000, outlier_ratio=0)
    assert picks["slow"] / sum(picks.values()) < 0.05, picks


def test_outstanding_alone_would_have_given_it_far_more():
    """The same run with equal latencies: the share the test above avoids."""
    picks, _ = simulate({"fast": 0.002, "slow": 0.002}, clients=4, requests=4000, outlier_ratio=0)
    assert picks["slow"] / sum(picks.values()) > 0.3, picks


def test_a_slow_worker_still_takes_load_when_the_fast_one_is_saturated():
    # 60 clients: the fast worker's queue grows until the slow one is cheaper.
    picks, _ = simulate({"fast": 0.002, "slow": 0.052}, clients=60, requests=6000, shared=True, outlier_ratio=0)
    assert picks["slow"] > 200, picks


def test_latency_outlier_is_ejected_for_a_cooloff():
    picks, balancer = simulate(
        {"a": 0.002, "b": 0.002, "slow": 0.060}, clients=4, requests=3000, outlier_cooloff_s=1000.0
    )
    assert balancer.healthy(["a", "b", "slow"]) == ["a", "b"]
    assert picks["slow"] < 30, picks


def test_outlier_ejection_never_takes_more_than_half():
    clock = FakeClock()
    balancer = Balancer(clock=clock, rng=random.Random(3), outlier_interval_s=0.0)
    addresses = ["a", "b", "c", "d"]
    for address, seconds in zip(addresses, (0.001, 0.1, 0.2, 0.3), strict=True):
        balancer.observe(balancer.replica(address), seconds, addresses)
    for address in addresses:  # re-check with every sample in
        balancer.observe(balancer.replica(address), balancer.replica(address).latency_s, addresses)
    assert len(balancer.healthy(addresses)) >= 2


def test_two_workers_never_both_ejected_as_outliers():
    _, balancer = simulate({"fast": 0.002, "slow": 0.3}, clients=2, requests=2000, outlier_cooloff_s=1000.0)
    assert balancer.healthy(["fast", "slow"]) == ["fast"]
    # The fast one is the median's other half, never an outlier itself.
    assert len(balancer.healthy(["fast", "slow"])) == 1


def test_per_worker_cap_leaves_full_workers_out():
    balancer = Balancer(max_outstanding=2, rng=random.Random(1))
    balancer.replica("a").outstanding = 2
    assert {balancer.pick(["a", "b"]).address for _ in range(30)} == {"b"}
    balancer.replica("b").outstanding = 2
    assert balancer.pick(["a", "b"]) is None
    assert balancer.at_capacity(["a", "b"])


async def test_every_worker_at_its_cap_is_refused_at_once_with_unavailable():
    workers = {a: FakeWorker(a) for a in "ab"}
    balancer = Balancer(lambda a: workers[a], max_outstanding=1)
    for address in "ab":
        balancer.replica(address).outstanding = 1
    with pytest.raises(Overloaded) as info:
        await forward_infer(balancer, ["a", "b"], Forward(b"x", time.monotonic() + 5))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert sum(w.calls for w in workers.values()) == 0


class RefusingWorker(FakeWorker):
    async def infer(self, forward, timeout_s):
        self.calls += 1
        raise UpstreamError(grpc.StatusCode.UNAVAILABLE, OVERLOAD_PREFIX + "queue full")


async def test_a_workers_admission_refusal_is_retried_elsewhere_and_never_ejects_it():
    workers = {"full": RefusingWorker("full"), "live": FakeWorker("live")}
    balancer = Balancer(lambda a: workers[a], eject_after=1, rng=random.Random(2))
    for _ in range(20):
        assert await forward_infer(balancer, ["full", "live"], Forward(b"x", time.monotonic() + 5)) == b"ok:live:x"
    assert workers["full"].calls > 1
    assert balancer.healthy(["full", "live"]) == ["full", "live"]


class HungWorker(FakeWorker):
    async def infer(self, forward, timeout_s):
        self.calls += 1
        raise UpstreamError(grpc.StatusCode.UNAVAILABLE, "worker did not answer a liveness ping", hung=True)


async def test_a_hung_worker_is_ejected_at_the_first_missed_ping_and_its_request_retried():
    workers = {"hung": HungWorker("hung"), "live": FakeWorker("live")}
    balancer = Balancer(lambda a: workers[a], eject_after=3, rng=random.Random(2))
    balancer.replica("live").outstanding = 5  # so the first pick is the hung one
    assert await forward_infer(balancer, ["hung", "live"], Forward(b"x", time.monotonic() + 5)) == b"ok:live:x"
    assert workers["hung"].calls == 1
    assert balancer.healthy(["hung", "live"]) == ["live"]


class SlowWorker(FakeWorker):
    def __init__(self, address: str, delay_s: float) -> None:
        super().__init__(address)
        self.delay_s = delay_s
        self.cancelled = 0

    async def infer(self, forward, timeout_s):
        self.calls += 1
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return b"ok:" + self.address.encode()


async def test_hedged_request_takes_the_first_answer_and_cancels_the_other():
    workers = {"stuck": SlowWorker("stuck", 5.0), "quick": SlowWorker("quick", 0.0)}
    balancer = Balancer(lambda a: workers[a], rng=random.Random(2))
    balancer.replica("quick").outstanding = 50  # the first pick is the stuck one
    response = await forward_infer(balancer, ["stuck", "quick"], Forward(b"x", time.monotonic() + 10),
                                   hedge_after_s=0.01)
    assert response == b"ok:quick"
    assert workers["stuck"].calls == 1 and workers["quick"].calls == 1
    await asyncio.sleep(0)
    assert workers["stuck"].cancelled == 1
    assert balancer.replica("stuck").outstanding == 0


async def test_without_hedging_the_request_waits_for_its_worker():
    workers = {"slowish": SlowWorker("slowish", 0.05), "quick": SlowWorker("quick", 0.0)}
    balancer = Balancer(lambda a: workers[a], rng=random.Random(2))
    balancer.replica("quick").outstanding = 50
    response = await forward_infer(balancer, ["slowish", "quick"], Forward(b"x", time.monotonic() + 10))
    assert response == b"ok:slowish" and workers["quick"].calls == 0


async def test_a_cancelled_hedged_request_leaves_no_attempt_running():
    workers = {"a": SlowWorker("a", 5.0), "b": SlowWorker("b", 5.0)}
    balancer = Balancer(lambda a: workers[a], rng=random.Random(2))
    request = asyncio.ensure_future(
        forward_infer(balancer, ["a", "b"], Forward(b"x", time.monotonic() + 10), hedge_after_s=0.01)
    )
    await asyncio.sleep(0.05)  # both attempts are out
    assert workers["a"].calls == 1 and workers["b"].calls == 1
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await asyncio.sleep(0)
    assert workers["a"].cancelled == 1 and workers["b"].cancelled == 1
    assert all(r.outstanding == 0 for r in balancer.replicas.values())
