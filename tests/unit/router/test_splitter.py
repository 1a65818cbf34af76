"""The traffic split: shares, stickiness, and what a weight change moves."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from services.router.splitter import Split

KEYS = [f"user-{i}".encode() for i in range(4000)]


def assign(weights: dict[str, int], keys=KEYS) -> dict[bytes, str]:
    split = Split.from_weights(weights)
    return {key: split.choose(key) for key in keys}


def shares(assignment: dict[bytes, str]) -> dict[str, float]:
    counts = Counter(assignment.values())
    return {version: 100 * n / len(assignment) for version, n in counts.items()}


@pytest.mark.parametrize(
    "weights",
    [{"1": 90, "2": 10}, {"1": 50, "2": 50}, {"3": 70, "4": 20, "5": 10}, {"1": 1, "2": 99}],
)
def test_sticky_shares_match_weights(weights):
    got = shares(assign(weights))
    for version, weight in weights.items():
        assert abs(got.get(version, 0.0) - weight) < 3, (version, got)


def test_same_key_same_version_and_independent_of_dict_order():
    a = assign({"1": 90, "2": 10})
    b = assign({"2": 10, "1": 90})
    assert a == b
    assert a == assign({"1": 90, "2": 10})


def test_zero_weight_versions_never_chosen_and_single_version_always():
    assert set(assign({"1": 100, "2": 0}).values()) == {"1"}
    assert Split.from_weights({}).choose(b"k") is None


@pytest.mark.parametrize("steps", [[5, 10, 20, 25, 50, 100], [10, 20]])
def test_raising_canary_keeps_its_keys_and_moves_only_onto_it(steps):
    previous = assign({"1": 100 - steps[0], "2": steps[0]})
    for canary in steps[1:]:
        current = assign({"1": 100 - canary, "2": canary})
        for key, version in previous.items():
            if version == "2":
                assert current[key] == "2"
            elif current[key] != version:
                assert current[key] == "2"  # keys only move onto the raised version
        previous = current


def test_rollback_moves_keys_only_back_to_stable():
    before = assign({"1": 80, "2": 20})
    after = assign({"1": 100 - 5, "2": 5})
    for key, version in before.items():
        if version == "1":
            assert after[key] == "1"


def test_three_versions_keys_move_only_from_losers_or_to_winners():
    before_w = {"1": 60, "2": 30, "3": 10}
    after_w = {"1": 50, "2": 30, "3": 20}
    before, after = assign(before_w), assign(after_w)
    for key, old in before.items():
        new = after[key]
        if new != old:
            assert after_w[old] < before_w[old] or after_w[new] > before_w[new]
        if old == "3":
            assert new == "3"


def test_random_split_follows_weights():
    split = Split.from_weights({"1": 75, "2": 25})
    rng = random.Random(7)
    counts = Counter(split.choose(None, rng.random) for _ in range(8000))
    assert abs(100 * counts["2"] / 8000 - 25) < 3


def test_version_order_is_numeric():
    assert [v for v, _ in Split.from_weights({"10": 50, "9": 50}).weighted] == ["9", "10"]
