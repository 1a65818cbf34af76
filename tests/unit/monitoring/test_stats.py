"""Drift statistics on numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.monitoring import stats


def test_psi_of_a_known_shift():
    # p = (0.5, 0.5), q = (0.25, 0.75): (0.25-0.5) ln(0.5) + (0.75-0.5) ln(1.5)
    expected = -0.25 * math.log(0.5) + 0.25 * math.log(1.5)
    assert stats.psi(np.array([50, 50]), np.array([25, 75])) == pytest.approx(expected)
    assert expected == pytest.approx(0.2747, abs=1e-4)


def test_psi_of_identical_shares_is_zero_whatever_the_totals():
    assert stats.psi(np.array([10, 30, 60]), np.array([1, 3, 6])) == pytest.approx(0.0)


def test_psi_floors_empty_bins_at_epsilon():
    # q puts 10 % where p had nothing: the term is (0.1 - 1e-4) ln(0.1 / 1e-4), finite.
    value = stats.psi(np.array([50, 50, 0]), np.array([45, 45, 10]))
    expected = 2 * (0.45 - 0.5) * math.log(0.45 / 0.5) + (0.1 - 1e-4) * math.log(0.1 / 1e-4)
    assert value == pytest.approx(expected)


def test_js_distance_known_values():
    # Disjoint supports: distance 1 in base 2; identical: 0.
    assert stats.js(np.array([10, 0]), np.array([0, 10])) == pytest.approx(1.0)
    assert stats.js(np.array([3, 7]), np.array([30, 70])) == pytest.approx(0.0, abs=1e-12)
    # p = (0.5, 0.5), q = (1, 0): m = (0.75, 0.25); JSD = (KL(p||m) + KL(q||m)) / 2 in bits.
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = 1.0 * math.log2(1 / 0.75)
    assert stats.js(np.array([1, 1]), np.array([2, 0])) == pytest.approx(math.sqrt((kl_p + kl_q) / 2))


def test_binned_ks_is_the_largest_cdf_gap():
    # CDFs (0.2, 0.5, 1.0) and (0.1, 0.2, 1.0): gaps 0.1, 0.3, 0.
    assert stats.ks(np.array([2, 3, 5]), np.array([1, 1, 8])) == pytest.approx(0.3)


def test_scores_are_per_feature_rows():
    reference = np.array([[50, 50], [10, 90]])
    current = np.array([[50, 50], [90, 10]])
    result = stats.scores(reference, current)
    assert result["psi"][0] == pytest.approx(0.0)
    assert result["psi"][1] > 1.0
    assert result["ks"].tolist() == pytest.approx([0.0, 0.8])


def test_empty_current_window_scores_zero_divergence_not_nan():
    result = stats.scores(np.array([[5, 5]]), np.array([[0, 0]]))
    assert all(np.isfinite(v).all() for v in result.values())


@pytest.mark.parametrize(
    ("score", "level"), [(0.05, "ok"), (0.1, "warn"), (0.2, "warn"), (0.25, "drift"), (3, "drift")]
)
def test_levels_follow_the_psi_bands(score, level):
    assert stats.level(score, (0.1, 0.25)) == level
