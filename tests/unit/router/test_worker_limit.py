"""The per-worker cap a router learns from a worker's own admission refusals, and the early
refusal in Router.infer: at 10x, requests a full worker would refuse are refused by the
router itself, before validation and without a hop to the worker."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from services.common.admission import OVERLOAD_PREFIX, Overloaded
from services.router.balancer import Balancer
from services.router.settings import RouterSettings
from services.router.worker_client import Forward, UpstreamError, forward_infer

from .tables import one_worker_router
from .test_balancer import FakeClock
from .test_core import digits_request, headers


class BoundedWorker:
    """Holds each request until released; refuses (overloaded) any past ``room`` at once."""

    def __init__(self, address: str, room: int) -> None:
        self.address = address
        self.room = room
        self.held = 0
        self.calls = 0
        self.refusals = 0
        self.release = asyncio.Event()

    async def infer(self, forward: Forward, timeout_s: float) -> bytes:
        self.calls += 1
        if self.held >= self.room:
            self.refusals += 1
            raise UpstreamError(grpc.StatusCode.UNAVAILABLE, OVERLOAD_PREFIX + f"holds {self.held}")
        self.held += 1
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        return b"ok"

    async def close(self, grace=None) -> None:
        pass


def test_a_refusal_caps_the_worker_at_what_it_held():
    clock = FakeClock()
    balancer = Balancer(clock=clock)
    replica = balancer.replica("a")
    replica.outstanding = 4  # three it took, and the one it refused
    balancer.refused(replica)
    replica.outstanding = 3
    assert balancer.pick(["a"]) is None
    assert balancer.at_capacity(["a"])
    assert "as it took before it last refused one" in balancer.full_reason(["a"])
    replica.outstanding = 2
    assert balancer.pick(["a"]) is replica


def test_answers_grow_the_learned_cap_back_and_it_is_forgotten_after_its_ttl():
    clock = FakeClock()
    balancer = Balancer(clock=clock, limit_ttl_s=5.0)
    replica = balancer.replica("a")
    replica.outstanding = 3
    balancer.refused(replica)
    assert replica.limit == 2
    for _ in range(2):
        balancer.succeeded(replica)
    assert replica.limit == pytest.approx(3.0, abs=0.2)  # one more per cap's worth of answers
    replica.outstanding = 3
    assert balancer.at_capacity(["a"])
    clock.now = 5.1
    assert not balancer.at_capacity(["a"])  # forgotten
    assert balancer.pick(["a"]) is replica


def test_a_worker_refused_while_holding_nothing_still_gets_one_at_a_time():
    balancer = Balancer(clock=FakeClock())
    replica = balancer.replica("a")
    replica.outstanding = 1
    balancer.refused(replica)
    replica.outstanding = 0
    assert balancer.pick(["a"]) is replica


def test_no_cap_is_learned_with_a_ttl_of_zero():
    balancer = Balancer(clock=FakeClock(), limit_ttl_s=0)
    replica = balancer.replica("a")
    replica.outstanding = 5
    balancer.refused(replica)
    assert not balancer.at_capacity(["a"])


def test_a_static_cap_below_the_learned_one_keeps_its_message():
    balancer = Balancer(clock=FakeClock(), max_outstanding=2)
    replica = balancer.replica("a")
    replica.outstanding = 5
    balancer.refused(replica)
    replica.outstanding = 2
    assert balancer.full_reason(["a"]) == "every worker of this version holds 2 requests from this router"


async def test_after_one_refusal_the_router_refuses_the_rest_itself():
    full = BoundedWorker("a", room=2)
    balancer = Balancer(lambda a: full)
    calls = [
        asyncio.ensure_future(forward_infer(balancer, ["a"], Forward(b"x", time.monotonic() + 5))) for _ in range(20)
    ]
    await asyncio.sleep(0.01)
    done = [c for c in calls if c.done()]
    assert len(done) == 18
    relayed = [c for c in done if isinstance(c.exception(), UpstreamError)]
    assert len(relayed) == 1 and relayed[0].exception().overloaded  # the worker's own refusal
    assert all(isinstance(c.exception(), Overloaded) for c in done if c not in relayed)
    # The worker saw the two it took and one refusal; the router refused the other 17 itself.
    assert (full.calls, full.refusals) == (3, 1)
    full.release.set()
    await asyncio.gather(*calls, return_exceptions=True)


@pytest.fixture
async def full_router():
    router = one_worker_router(BoundedWorker("w1:1", room=1), RouterSettings())
    yield router
    router.fakes["w1:1"].release.set()
    await router.close()


async def test_a_full_version_is_refused_before_the_request_is_validated(full_router):
    held = asyncio.ensure_future(full_router.infer(digits_request(version="1"), headers(), time.monotonic() + 5))
    await asyncio.sleep(0.01)
    with pytest.raises(UpstreamError, match=OVERLOAD_PREFIX):  # the worker's own refusal: the cap is learned
        await full_router.infer(digits_request(version="1"), headers(), time.monotonic() + 5)
    # Too many rows for the model would be INVALID_ARGUMENT; refused first, it is never decoded.
    with pytest.raises(Overloaded, match="as it took before it last refused one"):
        await full_router.infer(digits_request(version="1", rows=1000), headers(), time.monotonic() + 5)
    assert full_router.fakes["w1:1"].calls == 2
    full_router.fakes["w1:1"].release.set()
    await held


def test_a_refusal_for_the_requests_own_deadline_teaches_no_cap():
    balancer = Balancer(clock=FakeClock())
    replica = balancer.replica("a")
    replica.outstanding = 3
    balancer.refused(
        replica, OVERLOAD_PREFIX + "expected wait 80 ms is longer than the 20 ms left of the request's deadline"
    )
    assert not balancer.at_capacity(["a"])
    balancer.refused(
        replica, OVERLOAD_PREFIX + "expected queue wait 80 ms is over the 50 ms bound; retry on another worker"
    )
    assert balancer.at_capacity(["a"])
