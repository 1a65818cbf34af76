"""The Poisson arrival schedule and the split of load over processes (no clocks)."""

from __future__ import annotations

import numpy as np
import pytest

from services.bench.schedule import PoissonArrivals, split_evenly, split_rate


def test_arrivals_increase_and_have_the_right_mean_gap():
    arrivals = PoissonArrivals(200.0, np.random.default_rng(1), chunk=1000).until(100.0)
    gaps = np.diff([0.0, *arrivals])
    assert np.all(gaps > 0)
    # 20 000 expected arrivals: the count and mean gap are within a few standard errors.
    assert len(arrivals) == pytest.approx(20_000, rel=0.03)
    assert gaps.mean() == pytest.approx(1 / 200.0, rel=0.03)
    # Exponential gaps: the standard deviation equals the mean (coefficient of variation 1).
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)


def test_arrivals_continue_across_chunks():
    arrivals = PoissonArrivals(50.0, np.random.default_rng(2), chunk=7).until(10.0)
    assert arrivals == sorted(arrivals)
    assert len(set(arrivals)) == len(arrivals)
    assert arrivals[-1] < 10.0


def test_arrivals_are_reproducible_per_seed():
    one = PoissonArrivals(10.0, np.random.default_rng(5)).until(5.0)
    two = PoissonArrivals(10.0, np.random.default_rng(5)).until(5.0)
    other = PoissonArrivals(10.0, np.random.default_rng(6)).until(5.0)
    assert one == two
    assert one != other


def test_counts_in_windows_look_poisson():
    # Counts per one-second window of a rate-30 process: mean ≈ variance ≈ 30.
    arrivals = np.array(PoissonArrivals(30.0, np.random.default_rng(9)).until(2000.0))
    counts = np.bincount(arrivals.astype(int), minlength=2000)
    assert counts.mean() == pytest.approx(30.0, rel=0.03)
    assert counts.var() == pytest.approx(30.0, rel=0.15)


def test_rate_must_be_positive():
    with pytest.raises(ValueError):
        PoissonArrivals(0.0, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("total", "parts", "expected"),
    [(16, 4, [4, 4, 4, 4]), (10, 4, [3, 3, 2, 2]), (3, 4, [1, 1, 1, 0]), (1, 1, [1])],
)
def test_split_evenly(total, parts, expected):
    assert split_evenly(total, parts) == expected
    assert sum(split_evenly(total, parts)) == total


def test_split_rate_sums_to_total():
    shares = split_rate(250.0, 3)
    assert len(shares) == 3
    assert sum(shares) == pytest.approx(250.0)
    with pytest.raises(ValueError):
        split_rate(1.0, 0)
