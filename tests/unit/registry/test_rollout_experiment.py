"""The A/B report's statistics on recorded numbers (services/registry/rollout/experiment.py)."""

from __future__ import annotations

import math

import numpy as np

from services.common import version_windows as vw
from services.registry.rollout.experiment import merged_buckets, report


def window(requests: int, errors: int = 0, latencies_ms: dict[float, int] | None = None) -> vw.WindowStats:
    stats = vw.WindowStats(requests=requests, errors={"INTERNAL": errors} if errors else {})
    for latency, count in (latencies_ms or {4.0: requests - errors}).items():
        stats.buckets[vw.bucket_of(latency)] += count
    return stats


def by_metric(comparisons) -> dict[str, object]:
    return {c.metric: c for c in comparisons}


def test_a_clear_error_rate_difference_is_significant() -> None:
    variants, comparisons = report({"1": window(5000, 50), "2": window(5000, 150)}, {"1": 50, "2": 50}, "1")
    assert [(v.version, v.requests, v.errors) for v in variants] == [("1", 5000, 50), ("2", 5000, 150)]
    errors = by_metric(comparisons)["error_rate"]
    assert errors.significant and errors.pvalue < 1e-6 and "significant" in errors.statement
    assert (errors.variant, errors.against) == ("2", "1")


def test_a_small_sample_says_how_many_more_requests_it_needs() -> None:
    # 1 % vs 2 % on 300 each: far from significant; detecting it needs ~2250 per variant.
    _, comparisons = report({"1": window(300, 3), "2": window(300, 6)}, {"1": 50, "2": 50}, "1")
    errors = by_metric(comparisons)["error_rate"]
    assert not errors.significant
    assert 1500 < errors.more_requests_needed < 2500
    assert f"about {errors.more_requests_needed} more requests per variant" in errors.statement


def test_identical_error_rates_need_nothing_more() -> None:
    _, comparisons = report({"1": window(1000), "2": window(1000)}, {"1": 50, "2": 50}, "1")
    errors = by_metric(comparisons)["error_rate"]
    assert not errors.significant and errors.more_requests_needed == 0 and "no difference" in errors.statement


def test_a_latency_shift_is_found_by_the_histogram_test() -> None:
    slow = window(2000, latencies_ms={4.0: 1000, 8.0: 1000})
    fast = window(2000, latencies_ms={4.0: 1900, 8.0: 100})
    _, comparisons = report({"1": fast, "2": slow}, {"1": 90, "2": 10}, "1")
    latency = by_metric(comparisons)["latency"]
    assert latency.significant and latency.test.startswith("chi-square") and "p99" in latency.statement
    same = by_metric(report({"1": fast, "2": fast}, {"1": 90, "2": 10}, "1")[1])["latency"]
    assert not same.significant


def test_too_few_successes_are_not_tested_for_latency() -> None:
    _, comparisons = report({"1": window(1000), "2": window(10)}, {"1": 90, "2": 10}, "1")
    assert "fewer than 20" in by_metric(comparisons)["latency"].statement


def test_a_variant_without_requests_is_reported_not_tested() -> None:
    variants, comparisons = report({"1": window(1000), "2": vw.WindowStats()}, {"1": 90, "2": 10}, "1")
    assert math.isnan(variants[1].error_rate) and math.isnan(variants[1].p99_ms)
    assert by_metric(comparisons)["error_rate"].statement == "no requests on one side yet"


def test_sparse_buckets_are_merged_until_expected_counts_reach_five() -> None:
    rows = np.array([[1, 0, 2, 30, 1], [0, 1, 3, 25, 2]], dtype=float)
    merged = merged_buckets(rows)
    assert merged.sum() == rows.sum()
    shares = rows.sum(axis=1) / rows.sum()
    assert all((shares * column.sum()).min() >= 5 for column in merged.T[:-1])
