"""Admission on the router's request path: the edge counts, Router.infer refuses at once."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from services.common import edge
from services.common.admission import OVERLOAD_PREFIX, Overloaded
from services.router.core import Router
from services.router.settings import RouterSettings

from .tables import one_worker_router
from .test_core import RecordingWorker, digits_request, headers


class HeldWorker(RecordingWorker):
    """Answers only once released, so requests stay in flight."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.release = asyncio.Event()

    async def infer(self, forward, timeout_s):
        await self.release.wait()
        return await super().infer(forward, timeout_s)


async def through_edge(router: Router, raw: bytes) -> bytes:
    """One call as the edge runs it: the admission interceptor's begin and end around infer."""
    call = edge.RpcCall("router", "ModelInfer", None)
    edge.CURRENT.set(call)
    router.admission.begin(call)
    try:
        return (await router.infer(raw, headers(), time.monotonic() + 5)).response
    finally:
        call.seconds = 0.01
        router.admission.end(call)


@pytest.fixture
async def held_router():
    router = one_worker_router(HeldWorker("w1:1"), RouterSettings(max_in_flight_per_version=2))
    yield router
    router.fakes["w1:1"].release.set()
    await router.close()


async def test_the_request_past_the_version_cap_is_refused_at_once(held_router):
    held = [asyncio.ensure_future(through_edge(held_router, digits_request(version="1"))) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as info:
        await through_edge(held_router, digits_request(version="1"))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.message.startswith(OVERLOAD_PREFIX)
    assert len(held_router.fakes["w1:1"].seen) == 0  # nothing was forwarded for it
    held_router.fakes["w1:1"].release.set()
    await asyncio.gather(*held)
    await through_edge(held_router, digits_request(version="1"))  # room again


async def test_every_worker_at_the_per_worker_cap_is_refused_at_once():
    router = one_worker_router(HeldWorker("w1:1"), RouterSettings(max_in_flight_per_worker=1), max_outstanding=1)
    fakes = router.fakes
    try:
        first = asyncio.ensure_future(through_edge(router, digits_request(version="1")))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="every worker of this version holds 1"):
            await through_edge(router, digits_request(version="1"))
        fakes["w1:1"].release.set()
        await first
    finally:
        fakes["w1:1"].release.set()
        await router.close()


def test_bad_router_settings_name_the_flag():
    with pytest.raises(ValueError, match="--max-in-flight-per-worker must be at least 0"):
        RouterSettings(max_in_flight_per_worker=-1)
    with pytest.raises(ValueError, match="--liveness-timeout-s must be more than 0"):
        RouterSettings(liveness_timeout_s=0)
    assert RouterSettings(max_in_flight=5, deadline_admission=False).admission.max_in_flight == 5
