"""The batching decision, driven with lists and a fake clock (no asyncio, no sleeping)."""

import pytest

from services.worker.batching.policy import BatchPolicy, Dispatch, Wait, decide

POLICY = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.002)


def test_nothing_waiting():
    assert decide([], 0.0, POLICY) is None


def test_waits_for_the_rest_of_the_delay():
    assert decide([1, 1], 0.0005, POLICY) == Wait(pytest.approx(0.0015))


def test_full_batch_goes_at_once():
    assert decide([4, 4, 1], 0.0, POLICY) == Dispatch(2, 8)


def test_next_request_that_does_not_fit_closes_the_batch():
    assert decide([5, 4], 0.0, POLICY) == Dispatch(1, 5)


def test_delay_expired_sends_the_largest_batch_possible():
    assert decide([1, 2, 3], 0.002, POLICY) == Dispatch(3, 6)


def test_rows_not_requests_are_counted():
    assert decide([7, 1], 0.0, POLICY) == Dispatch(2, 8)


def test_largest_preferred_prefix_goes_at_once():
    policy = BatchPolicy(max_batch_size=64, max_queue_delay_s=1.0, preferred_batch_sizes=(2, 4))
    assert decide([1, 1, 1, 1, 1], 0.0, policy) == Dispatch(4, 4)
    assert decide([1, 2, 3], 0.0, policy) == Wait(1.0)


def test_zero_delay_sends_immediately():
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.0)
    assert decide([1], 0.0, policy) == Dispatch(1, 1)


def test_oversized_request_never_wedges_the_queue():
    assert decide([9, 1], 0.0, POLICY) == Dispatch(1, 9)


def test_invalid_policy_is_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchPolicy(max_batch_size=0, max_queue_delay_s=0.001)
    with pytest.raises(ValueError, match="max_queue_delay_s"):
        BatchPolicy(max_batch_size=4, max_queue_delay_s=-1)


def test_batch_goes_at_once_when_waiting_cannot_grow_it():
    assert decide([1], 0.0, POLICY, expected_rows=1) == Dispatch(1, 1)
    assert decide([2, 1], 0.0, POLICY, expected_rows=3) == Dispatch(2, 3)
    assert decide([1], 0.0, POLICY, expected_rows=4) == Wait(pytest.approx(0.002))
    assert decide([1], 0.0, POLICY, expected_rows=None) == Wait(pytest.approx(0.002))


def test_while_every_instance_is_busy_only_a_batch_that_cannot_grow_goes():
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.002, preferred_batch_sizes=(2, 4))
    # The delay has long passed and a preferred size is reached, but the batch could not
    # start before an instance frees, and rows arriving meanwhile could still join it.
    assert decide([1, 1, 1, 1], 0.5, policy, instance_free=False) == Wait(None)
    assert decide([1], 0.5, policy, expected_rows=4, instance_free=False) == Wait(None)
    # Full, or everything in flight already in it: staged at once.
    assert decide([4, 4, 1], 0.0, policy, instance_free=False) == Dispatch(2, 8)
    assert decide([5, 4], 0.0, policy, instance_free=False) == Dispatch(1, 5)
    assert decide([1, 1, 1], 0.0, policy, expected_rows=3, instance_free=False) == Dispatch(3, 3)


def test_the_held_batch_goes_by_the_usual_rules_once_an_instance_is_free():
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.002, preferred_batch_sizes=(2, 4))
    assert decide([1, 1, 1, 1, 1], 0.5, policy, instance_free=True) == Dispatch(4, 4)
    assert decide([1, 2], 0.5, policy, instance_free=True) == Dispatch(2, 3)
    assert decide([1], 0.0005, POLICY, instance_free=True) == Wait(pytest.approx(0.0015))
