"""The A/B report (issue 14 §4): per variant, requests, error rate and latency quantiles,
and for each metric a significance statement against the control, from scipy/statsmodels.

- **Error rate**: a two-sided two-proportion score test (statsmodels
  ``test_proportions_2indep``). When it is not significant, the requests per variant that
  would detect the observed difference with 80 % power (statsmodels ``NormalIndPower`` on
  Cohen's h) give "not yet significant: about N more requests per variant".
- **Latency**: the histograms are binned data, so the test is a chi-square test of
  homogeneity over the buckets (scipy ``chi2_contingency``), buckets merged until each
  expected count is at least 5 (the test's usual validity rule).

A pure function of the windows' statistics, unit-tested in
tests/unit/registry/test_rollout_experiment.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from services.common.version_windows import WindowStats
from services.registry.rollout.judgement import SERVER_ERROR_CODES

ALPHA = 0.05
POWER = 0.8
#: Least successes per variant for a latency comparison.
MIN_LATENCY_SAMPLES = 20


@dataclass(frozen=True)
class Variant:
    version: str
    weight: int
    requests: int
    errors: int
    error_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Comparison:
    metric: str  # "error_rate" | "latency"
    variant: str
    against: str
    test: str
    statistic: float
    pvalue: float
    significant: bool
    statement: str
    more_requests_needed: int = 0


def variant(version: str, weight: int, stats: WindowStats) -> Variant:
    errors = stats.error_count(SERVER_ERROR_CODES)
    return Variant(
        version, weight, stats.requests, errors, errors / stats.requests if stats.requests else math.nan,
        stats.quantile_ms(0.5), stats.quantile_ms(0.95), stats.quantile_ms(0.99),
    )


def compare_error_rates(a: Variant, control: Variant) -> Comparison:
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize, test_proportions_2indep

    test = "two-proportion score test"
    if a.requests == 0 or control.requests == 0:
        return Comparison("error_rate", a.version, control.version, test, math.nan, math.nan, False,
                          "no requests on one side yet")
    with np.errstate(divide="ignore", invalid="ignore"):
        result = test_proportions_2indep(a.errors, a.requests, control.errors, control.requests,
                                         compare="diff", alternative="two-sided", method="score")
    statistic, pvalue = float(result.statistic), float(result.pvalue)
    if math.isnan(pvalue):  # no errors on either side, or nothing but errors
        pvalue, statistic = 1.0, 0.0
    diff = a.error_rate - control.error_rate
    if pvalue < ALPHA:
        return Comparison("error_rate", a.version, control.version, test, statistic, pvalue, True,
                          f"error rate {a.error_rate:.2%} vs {control.error_rate:.2%}: significant "
                          f"(p={pvalue:.3g})")
    needed = 0
    if diff != 0:
        effect = abs(float(proportion_effectsize(a.error_rate, control.error_rate)))
        if effect > 0:
            per_variant = NormalIndPower().solve_power(effect_size=effect, alpha=ALPHA, power=POWER, ratio=1.0)
            needed = max(0, math.ceil(per_variant) - min(a.requests, control.requests))
    if needed:
        statement = f"not yet significant (p={pvalue:.3g}): about {needed} more requests per variant"
    elif diff == 0:
        statement = f"no difference in error rate ({a.error_rate:.2%})"
    else:
        statement = f"not significant (p={pvalue:.3g})"
    return Comparison("error_rate", a.version, control.version, test, statistic, pvalue, False, statement, needed)


def merged_buckets(rows: np.ndarray) -> np.ndarray:
    """Adjacent histogram buckets merged until every expected count is at least 5."""
    columns = [c for c in rows.T if c.sum() > 0]
    merged: list[np.ndarray] = []
    current = None
    total = rows.sum()
    shares = rows.sum(axis=1) / total
    for column in columns:
        current = column if current is None else current + column
        if (shares * current.sum()).min() >= 5:
            merged.append(current)
            current = None
    if current is not None:
        if merged:
            merged[-1] = merged[-1] + current
        else:
            merged.append(current)
    return np.array(merged).T


def compare_latency(a: Variant, a_stats: WindowStats, control: Variant, c_stats: WindowStats) -> Comparison:
    from scipy.stats import chi2_contingency

    test = "chi-square on the latency histograms"
    if min(a_stats.successes, c_stats.successes) < MIN_LATENCY_SAMPLES:
        return Comparison("latency", a.version, control.version, test, math.nan, math.nan, False,
                          f"not yet significant: fewer than {MIN_LATENCY_SAMPLES} successful requests on one side")
    table = merged_buckets(np.array([a_stats.buckets, c_stats.buckets], dtype=float))
    if table.shape[1] < 2:
        return Comparison("latency", a.version, control.version, test, 0.0, 1.0, False,
                          "latency histograms are the same (one bucket)")
    result = chi2_contingency(table)
    statistic, pvalue = float(result.statistic), float(result.pvalue)
    shift = f"p50 {a.p50_ms:.1f} vs {control.p50_ms:.1f} ms, p99 {a.p99_ms:.1f} vs {control.p99_ms:.1f} ms"
    if pvalue < ALPHA:
        return Comparison("latency", a.version, control.version, test, statistic, pvalue, True,
                          f"latency distributions differ: {shift} (p={pvalue:.3g})")
    return Comparison("latency", a.version, control.version, test, statistic, pvalue, False,
                      f"not yet significant (p={pvalue:.3g}): {shift}")


def report(windows: dict[str, WindowStats], weights: dict[str, int], control: str
           ) -> tuple[list[Variant], list[Comparison]]:
    """Variants in version order and each non-control variant compared with ``control``."""
    order = sorted(windows, key=lambda v: (0, int(v)) if v.isdigit() else (1, v))
    variants = {v: variant(v, weights.get(v, 0), windows[v]) for v in order}
    comparisons = []
    for version in order:
        if version == control or control not in variants:
            continue
        comparisons.append(compare_error_rates(variants[version], variants[control]))
        comparisons.append(compare_latency(variants[version], windows[version], variants[control],
                                           windows[control]))
    return list(variants.values()), comparisons
