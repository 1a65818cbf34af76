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


def warm(calls: Calls, seconds: float, version: str = "1") -> None:
    """MIN_SAMPLES completed calls of ``seconds`` each."""
    for _ in range(MIN_SAMPLES):
        calls.end(calls.admit(version=version), seconds)


def test_deadline_shorter_than_the_versions_calls_take_is_refused():
    calls = Calls(Admission("router"))
    warm(calls, seconds=0.1)
    with pytest.raises(Overloaded, match="takes 100 ms here now, longer than the 50 ms left"):
        calls.admit(remaining_s=0.05)
    assert calls.admission.refused["wait"] == 1
    calls.end(calls.admit(remaining_s=0.5))  # enough time left: admitted
    calls.end(calls.admit(remaining_s=None))  # no deadline: admitted
    calls.end(calls.admit(version="2", remaining_s=0.05))  # nothing known of version 2 yet


def test_a_burst_after_a_quiet_spell_is_not_refused_for_its_size():
    """Time refusals do not extrapolate from calls ahead: a burst is the workers' to judge."""
    calls = Calls(Admission("router"))
    warm(calls, seconds=0.01)
    burst = [calls.admit(remaining_s=0.5) for _ in range(200)]
    for call in burst:
        calls.end(call, 0.01)


def test_no_estimate_before_enough_calls():
    load = VersionLoad()
    for _ in range(MIN_SAMPLES - 1):
        load.observe(1.0)
    assert load.expected_s() == 0.0
    load.observe(1.0)
    assert load.expected_s() == pytest.approx(1.0)


def test_deadline_admission_can_be_turned_off():
    calls = Calls(Admission("router", AdmissionSettings(deadline_aware=False)))
    warm(calls, seconds=0.1)
    calls.end(calls.admit(remaining_s=0.01))


@pytest.mark.parametrize(
    "kwargs, named",
    [({"max_in_flight": -1}, "max_in_flight"), ({"max_in_flight_per_version": -2}, "max_in_flight_per_version"),
     ({"max_queue_wait_s": -0.5}, "max_queue_wait_s")],
)
def test_bad_settings_name_the_setting(kwargs, named):
    with pytest.raises(ValueError, match=named):
        AdmissionSettings(**kwargs)
