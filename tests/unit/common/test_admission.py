"""Admission: in-flight bounds counted from the edge's begin hook, and deadline-aware refusal."""

from __future__ import annotations

import grpc
import pytest

from services.common import edge
from services.common.admission import (
    MIN_SAMPLES,
    OVERLOAD_PREFIX,
    Admission,
    AdmissionSettings,
    Overloaded,
    VersionLoad,
    is_overload,
)


class Calls:
    """Drives an Admission the way the edge does: begin, the handler's admit, end."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def begin(self, method: str = "ModelInfer") -> edge.RpcCall:
        call = edge.RpcCall("worker", method, None)
        edge.CURRENT.set(call)
        self.admission.begin(call)
        return call

    def admit(self, model="m", version="1", remaining_s=None, method="ModelInfer") -> edge.RpcCall:
        call = self.begin(method)
        try:
            self.admission.admit(model, version, remaining_s)
        except Overloaded:
            self.end(call)
            raise
        return call

    def end(self, call: edge.RpcCall, seconds: float = 0.01) -> None:
        call.seconds = seconds
        self.admission.end(call)


def test_process_cap_refuses_the_next_call_at_once_and_recovers():
    calls = Calls(Admission("worker", AdmissionSettings(max_in_flight=3)))
    held = [calls.admit(version=str(i)) for i in range(3)]
    with pytest.raises(Overloaded) as info:
        calls.admit(version="9")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.message.startswith(OVERLOAD_PREFIX) and is_overload(info.value.message)
    assert "limit is 3" in info.value.message
    assert calls.admission.refused["in_flight"] == 1
    calls.end(held.pop())
    calls.end(calls.admit(version="9"))
    for call in held:
        calls.end(call)
    assert calls.admission.in_flight == 0
    assert all(load.in_flight == 0 for load in calls.admission.versions.values())


def test_calls_not_yet_admitted_count_against_the_process():
    """Counted from arrival: a call inside the edge but before admit() already holds a place."""
    calls = Calls(Admission("worker", AdmissionSettings(max_in_flight=2)))
    arrived = [calls.begin(), calls.begin()]
    with pytest.raises(Overloaded):
        calls.admit()
    for call in arrived:
        calls.end(call)
    calls.end(calls.admit())


def test_version_cap_is_per_version():
    calls = Calls(Admission("worker", AdmissionSettings(max_in_flight_per_version=2)))
    held = [calls.admit("m", "1"), calls.admit("m", "1")]
    with pytest.raises(Overloaded, match="model 'm' version 1 holds 2 requests, its limit is 2"):
        calls.admit("m", "1")
    held.append(calls.admit("m", "2"))  # another version has its own bound
    for call in held:
        calls.end(call)
    calls.end(calls.admit("m", "1"))


def test_other_methods_are_never_counted_or_refused():
    calls = Calls(Admission("worker", AdmissionSettings(max_in_flight=1)))
    held = calls.admit()
    health = calls.begin("ModelReady")
    assert calls.admission.in_flight == 1
    calls.end(health)
    calls.end(held)


def warm(calls: Calls, seconds: float, concurrency: int, version: str = "1") -> None:
    """MIN_SAMPLES completions of ``seconds`` each with ``concurrency`` calls in flight."""
    for _ in range(MIN_SAMPLES):
        batch = [calls.admit(version=version) for _ in range(concurrency)]
        for call in batch:
            calls.end(call, seconds)


def test_deadline_shorter_than_expected_wait_is_refused():
    calls = Calls(Admission("worker"))
    warm(calls, seconds=0.1, concurrency=1)  # throughput: 10 per second
    ahead = [calls.admit(remaining_s=60) for _ in range(5)]  # 0.5 s of work ahead
    with pytest.raises(Overloaded, match="longer than the 200 ms left"):
        calls.admit(remaining_s=0.2)
    assert calls.admission.refused["wait"] == 1
    calls.end(calls.admit(remaining_s=1.0), 0.1)  # enough time left: admitted
    calls.end(calls.admit(remaining_s=None), 0.1)  # no deadline: admitted
    for call in ahead:
        calls.end(call, 0.1)


def test_expected_wait_uses_throughput_not_count():
    """Eight calls ahead of a version that completes eight at a time wait one service time."""
    load = VersionLoad()
    for _ in range(MIN_SAMPLES):
        load.observe(0.1, 8)
    assert load.expected_wait_s(8) == pytest.approx(0.1)
    assert VersionLoad().expected_wait_s(100) == 0.0  # nothing observed yet: no estimate


def test_queue_bound_in_time():
    calls = Calls(Admission("worker", AdmissionSettings(max_queue_wait_s=0.25)))
    warm(calls, seconds=0.1, concurrency=1)
    ahead = [calls.admit() for _ in range(3)]
    with pytest.raises(Overloaded, match="over the 250 ms bound"):
        calls.admit(remaining_s=None)
    for call in ahead:
        calls.end(call, 0.1)


def test_deadline_admission_can_be_turned_off():
    calls = Calls(Admission("worker", AdmissionSettings(deadline_aware=False)))
    warm(calls, seconds=0.1, concurrency=1)
    ahead = [calls.admit() for _ in range(5)]
    calls.end(calls.admit(remaining_s=0.01))
    for call in ahead:
        calls.end(call)


@pytest.mark.parametrize(
    "kwargs, named",
    [({"max_in_flight": -1}, "max_in_flight"), ({"max_in_flight_per_version": -2}, "max_in_flight_per_version"),
     ({"max_queue_wait_s": -0.5}, "max_queue_wait_s")],
)
def test_bad_settings_name_the_setting(kwargs, named):
    with pytest.raises(ValueError, match=named):
        AdmissionSettings(**kwargs)
