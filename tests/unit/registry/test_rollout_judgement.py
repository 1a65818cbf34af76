"""The rollout judgement on recorded numbers: one test (or more) per rule of judgement.py."""

from __future__ import annotations

import math

import pytest

from services.common import version_windows as vw
from services.registry.rollout.judgement import Gates, Outcome, Progress, Verdict, judge

STEPS = (5, 25, 50, 100)
GATES = Gates()  # the CLI defaults: +1 % errors, p99 ×1.5, 200 requests, limits 1 / 1


def window(requests: int, errors: dict[str, int] | None = None, latency_ms: float = 4.0) -> vw.WindowStats:
    """``requests`` requests, ``errors`` by code, every success at ``latency_ms``."""
    stats = vw.WindowStats(requests=requests, errors=dict(errors or {}))
    stats.buckets[vw.bucket_of(latency_ms)] = requests - stats.error_count()
    return stats


def test_a_good_canary_advances_one_step() -> None:
    result = judge(Progress(STEPS), GATES, window(1000, {"INTERNAL": 2}), window(300, {"INTERNAL": 1}))
    assert (result.verdict, result.outcome) == (Verdict.ADVANCE, Outcome.PASS)
    assert result.progress.step == 1 and result.progress.weight == 25
    assert result.evidence["canary_requests"] == 300 and result.evidence["error_rate_pvalue"] > 0.05


def test_passing_the_step_before_100_promotes() -> None:
    result = judge(Progress(STEPS, step=2), GATES, window(800), window(800))
    assert result.verdict is Verdict.PROMOTE
    # Steps that end below 100: passing the last one promotes too.
    assert judge(Progress((10, 20), step=1), GATES, window(800), window(800)).verdict is Verdict.PROMOTE


def test_a_version_failing_20_percent_is_rolled_back() -> None:
    result = judge(Progress(STEPS), GATES, window(950), window(250, {"INTERNAL": 50}))
    assert (result.verdict, result.outcome) == (Verdict.ROLLBACK, Outcome.FAIL)
    assert "error rate 20.00%" in result.reasons[0] and result.evidence["error_rate_pvalue"] < 1e-6
    assert result.progress.failures == 1


def test_an_increase_within_the_margin_passes() -> None:
    # 1.5 % vs 1 %: above the baseline but not significantly above the allowed +1 %.
    result = judge(Progress(STEPS), GATES, window(2000, {"UNAVAILABLE": 20}), window(400, {"UNAVAILABLE": 6}))
    assert result.outcome is Outcome.PASS


def test_two_point_estimates_over_the_margin_are_not_enough() -> None:
    # 2 errors in 200 vs 0 in 200: the point estimates differ by exactly 1 %, far from significant.
    result = judge(Progress(STEPS), GATES, window(200), window(200, {"INTERNAL": 3}))
    assert result.outcome is Outcome.PASS and result.evidence["error_rate_pvalue"] > 0.05


def test_client_errors_do_not_count_against_the_canary() -> None:
    result = judge(Progress(STEPS), GATES, window(500), window(500, {"INVALID_ARGUMENT": 100}))
    assert result.outcome is Outcome.PASS


def test_a_five_times_slower_version_fails_the_latency_gate() -> None:
    result = judge(Progress(STEPS), GATES, window(500, latency_ms=10), window(500, latency_ms=50))
    assert result.verdict is Verdict.ROLLBACK
    assert result.evidence["p99_ratio"] > 4 and "p99" in result.reasons[0]


def test_latency_below_the_floor_is_not_judged_as_a_ratio() -> None:
    # 0.3 ms vs 1 ms is ×3, but both are under the 2 ms floor: noise, not a regression.
    result = judge(Progress(STEPS), GATES, window(500, latency_ms=0.3), window(500, latency_ms=1.0))
    assert result.outcome is Outcome.PASS and result.evidence["p99_ratio"] == 1.0


def test_drift_over_the_limit_fails_and_nan_drift_is_ignored() -> None:
    assert judge(Progress(STEPS), GATES, window(500), window(500), drift=0.35).outcome is Outcome.FAIL
    assert judge(Progress(STEPS), GATES, window(500), window(500), drift=0.1).outcome is Outcome.PASS
    nan = judge(Progress(STEPS), GATES, window(500), window(500), drift=math.nan)
    assert nan.outcome is Outcome.PASS and nan.evidence["drift"] is None


@pytest.mark.parametrize(("base", "canary"), [(1000, 150), (150, 1000), (1000, 0), (0, 0)])
def test_below_min_requests_is_inconclusive_and_holds(base: int, canary: int) -> None:
    result = judge(Progress(STEPS), GATES, window(base), window(canary, {"INTERNAL": canary // 2}))
    assert (result.verdict, result.outcome) == (Verdict.HOLD, Outcome.INCONCLUSIVE)
    assert "too little traffic" in result.reasons[0]
    assert result.progress.failures == 0 and result.progress.step == 0 and result.progress.inconclusive == 1


def test_inconclusive_windows_in_a_row_pause_never_roll_back() -> None:
    progress = Progress(STEPS)
    verdicts = []
    for _ in range(3):
        result = judge(progress, GATES, window(20), window(3, {"INTERNAL": 3}))
        verdicts.append(result.verdict)
        progress = result.progress
    assert verdicts == [Verdict.HOLD, Verdict.HOLD, Verdict.PAUSE]
    assert "3 inconclusive windows in a row" in result.reasons[-1]


def test_a_pass_resets_the_inconclusive_count() -> None:
    result = judge(Progress(STEPS, inconclusive=2), GATES, window(500), window(500))
    assert result.progress.inconclusive == 0


@pytest.mark.parametrize("broken", [
    None,
    vw.WindowStats(requests=-1),
    vw.WindowStats(requests=10, errors={"INTERNAL": 11}),
    vw.WindowStats(requests=math.nan),  # type: ignore[arg-type]
])
def test_missing_or_malformed_statistics_are_inconclusive(broken: vw.WindowStats | None) -> None:
    for base, canary in ((broken, window(500)), (window(500), broken)):
        result = judge(Progress(STEPS), GATES, base, canary)
        assert result.outcome is Outcome.INCONCLUSIVE and "no usable statistics" in result.reasons[0]


def test_failure_limit_counts_failures_in_total() -> None:
    gates = Gates(failure_limit=2, consecutive_failure_limit=5)
    bad = (window(500), window(500, {"INTERNAL": 100}))
    first = judge(Progress(STEPS), gates, *bad)
    assert first.verdict is Verdict.HOLD and first.progress.failures == 1
    passed = judge(first.progress, gates, window(500), window(500))
    assert passed.progress.failures == 1 and passed.progress.consecutive_failures == 0
    second = judge(passed.progress, gates, *bad)
    assert second.verdict is Verdict.ROLLBACK and "failure 2 (limit 2)" in second.reasons[-1]


def test_consecutive_failure_limit_counts_failures_in_a_row() -> None:
    gates = Gates(failure_limit=10, consecutive_failure_limit=2)
    bad = (window(500), window(500, {"INTERNAL": 100}))
    first = judge(Progress(STEPS), gates, *bad)
    assert first.verdict is Verdict.HOLD
    # An inconclusive window in between neither passes nor breaks the run of failures.
    between = judge(first.progress, gates, window(10), window(10))
    assert between.progress.consecutive_failures == 1
    second = judge(between.progress, gates, *bad)
    assert second.verdict is Verdict.ROLLBACK and second.progress.consecutive_failures == 2


def test_zero_errors_on_both_sides_pass_and_all_errors_on_the_canary_fail() -> None:
    assert judge(Progress(STEPS), GATES, window(300), window(300)).outcome is Outcome.PASS
    failing = judge(Progress(STEPS), GATES, window(300), window(300, {"INTERNAL": 300}))
    assert failing.verdict is Verdict.ROLLBACK
    # No successful canary request: no p99 to compare, the error gate decides.
    assert "p99_ratio" not in failing.evidence


def test_quantiles_from_the_histogram() -> None:
    stats = vw.WindowStats(requests=100)
    stats.buckets[vw.bucket_of(1.0)] = 99
    stats.buckets[vw.bucket_of(100.0)] = 1
    assert 0.75 <= stats.quantile_ms(0.5) <= 1.25  # within one bucket (×1.25)
    assert 80 <= stats.quantile_ms(1.0) <= 125.0
    assert math.isnan(vw.WindowStats().quantile_ms(0.99))
