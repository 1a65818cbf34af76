"""The rollout judgement: a pure function from a rollout's progress and one window's
statistics to a verdict (issue 14 §2). No clock, no Redis, no I/O: the controller reads
the window, calls ``judge``, and writes what it says with a compare-and-set.

Rules, in order (each is unit-tested in tests/unit/registry/test_rollout_judgement.py):

1. *Missing data.* No statistics for either side, or numbers that are not finite
   (NaN, ±inf, negative counts, more errors than requests) → **inconclusive**.
2. *Too little traffic.* Fewer than ``min_requests`` requests on either side (a version
   with no traffic included) → **inconclusive**. Inconclusive never passes and never
   fails: it holds the step; ``max_inconclusive`` inconclusive windows in a row **pause**
   the rollout (low traffic never causes a rollback).
3. *Error rate.* Server-side failures (``SERVER_ERROR_CODES``) of canary and baseline are
   compared with a one-sided two-proportion score test (statsmodels
   ``test_proportions_2indep``, Miettinen–Nurminen score) of H0: ``p_canary − p_baseline ≤
   margin`` against H1: ``> margin``. The gate fails when H0 is rejected at ``alpha``: an
   increase that noise cannot explain, not a difference of two point estimates.
4. *Latency.* The ratio of the canary's p99 to the baseline's, both read from the fixed
   histograms, each raised to ``p99_floor_ms`` first (below it, buckets and scheduling
   noise dominate); over ``max_p99_ratio`` fails. Skipped when either side has no
   successful request (rule 3 judges those).
5. *Drift.* When a drift score is given (finite), over ``max_drift`` fails.
6. *Outcome.* Any failed gate → a failure: counted in total and in a row; reaching
   ``failure_limit`` failures, or ``consecutive_failure_limit`` in a row → **rollback**,
   else **hold** (judge the same step again). All gates passed → **advance** to the next
   step, or **promote** when this was the last step or the next one is 100 % (at 100 % the
   baseline takes no traffic, so there is nothing left to compare over the same window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from services.common.version_windows import WindowStats

#: Status codes that count against a version: its workers failed or were too slow. Client
#: mistakes (INVALID_ARGUMENT, NOT_FOUND, ...) and rate limits say nothing about it.
SERVER_ERROR_CODES = frozenset({"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS",
                                "UNIMPLEMENTED"})


class Verdict(StrEnum):
    ADVANCE = "advance"
    HOLD = "hold"
    PAUSE = "pause"
    ROLLBACK = "rollback"
    PROMOTE = "promote"


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Gates:
    """The thresholds of one rollout (the CLI's flags)."""

    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    max_drift: float = 0.2
    min_requests: int = 200
    failure_limit: int = 1
    consecutive_failure_limit: int = 1
    #: Inconclusive windows in a row that pause the rollout.
    max_inconclusive: int = 3
    #: Significance level of the error-rate test.
    alpha: float = 0.05
    #: p99s below this are raised to it before the ratio is taken.
    p99_floor_ms: float = 2.0


@dataclass(frozen=True)
class Progress:
    """What the judgement needs of a rollout: where it is and what it has seen."""

    steps: tuple[int, ...]
    step: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    inconclusive: int = 0

    @property
    def weight(self) -> int:
        return self.steps[self.step]


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    outcome: Outcome
    #: Why, one line per gate that did not pass (or the reason it could not be judged).
    reasons: tuple[str, ...]
    #: The rollout's progress after this judgement.
    progress: Progress
    #: The numbers the verdict rests on (recorded with the decision).
    evidence: dict[str, Any] = field(default_factory=dict)


def _valid(stats: WindowStats | None) -> bool:
    if stats is None:
        return False
    numbers = [stats.requests, *stats.errors.values(), *stats.buckets]
    if not all(isinstance(n, int | float) and math.isfinite(n) and n >= 0 for n in numbers):
        return False
    return stats.error_count() <= stats.requests and stats.successes <= stats.requests


def error_rate_test(canary_errors: int, canary_n: int, base_errors: int, base_n: int,
                    margin: float) -> float:
    """p-value of H0: p_canary − p_baseline ≤ margin (one-sided score test)."""
    import numpy as np
    from statsmodels.stats.proportion import test_proportions_2indep

    with np.errstate(divide="ignore", invalid="ignore"):  # ratios it also reports; unused here
        result = test_proportions_2indep(
            canary_errors, canary_n, base_errors, base_n, value=margin, compare="diff",
            alternative="larger", method="score",
        )
    pvalue = float(result.pvalue)
    if math.isnan(pvalue):
        # Degenerate variance (no errors anywhere, or nothing but errors): the observed
        # difference is then exact.
        diff = canary_errors / canary_n - base_errors / base_n
        return 0.0 if diff > margin else 1.0
    return pvalue


def judge(
    progress: Progress,
    gates: Gates,
    baseline: WindowStats | None,
    canary: WindowStats | None,
    drift: float | None = None,
) -> Judgement:
    """The verdict on one window (see the module docstring for the rules)."""
    evidence: dict[str, Any] = {"weight": progress.weight, "step": progress.step}
    if not _valid(baseline) or not _valid(canary):
        side = "baseline" if not _valid(baseline) else "canary"
        return _inconclusive(progress, gates, f"no usable statistics for the {side} in this window", evidence)
    assert baseline is not None and canary is not None
    base_n, can_n = baseline.requests, canary.requests
    base_e, can_e = baseline.error_count(SERVER_ERROR_CODES), canary.error_count(SERVER_ERROR_CODES)
    base_p99, can_p99 = baseline.quantile_ms(0.99), canary.quantile_ms(0.99)
    evidence.update(
        baseline_requests=base_n, canary_requests=can_n, baseline_errors=base_e, canary_errors=can_e,
        baseline_error_rate=base_e / base_n if base_n else None,
        canary_error_rate=can_e / can_n if can_n else None,
        baseline_p99_ms=None if math.isnan(base_p99) else round(base_p99, 3),
        canary_p99_ms=None if math.isnan(can_p99) else round(can_p99, 3),
        drift=drift if drift is not None and math.isfinite(drift) else None,
    )
    if base_n < gates.min_requests or can_n < gates.min_requests:
        return _inconclusive(
            progress, gates,
            f"too little traffic: baseline {base_n}, canary {can_n} requests (need {gates.min_requests} each)",
            evidence,
        )

    reasons: list[str] = []
    pvalue = error_rate_test(can_e, can_n, base_e, base_n, gates.max_error_rate_increase)
    evidence["error_rate_pvalue"] = round(pvalue, 6)
    if pvalue < gates.alpha:
        reasons.append(
            f"error rate {can_e / can_n:.2%} vs baseline {base_e / base_n:.2%}: the increase is above the "
            f"allowed {gates.max_error_rate_increase:.2%} (p={pvalue:.3g} < {gates.alpha:g})"
        )
    if not math.isnan(base_p99) and not math.isnan(can_p99):
        ratio = max(can_p99, gates.p99_floor_ms) / max(base_p99, gates.p99_floor_ms)
        evidence["p99_ratio"] = round(ratio, 3)
        if ratio > gates.max_p99_ratio:
            reasons.append(
                f"p99 {can_p99:.1f} ms vs baseline {base_p99:.1f} ms: ratio {ratio:.2f} over {gates.max_p99_ratio:g}"
            )
    if drift is not None and math.isfinite(drift) and drift > gates.max_drift:
        reasons.append(f"drift {drift:.3f} over {gates.max_drift:g}")

    if reasons:
        failures = progress.failures + 1
        in_a_row = progress.consecutive_failures + 1
        after = replace(progress, failures=failures, consecutive_failures=in_a_row, inconclusive=0)
        if failures >= gates.failure_limit or in_a_row >= gates.consecutive_failure_limit:
            reasons.append(
                f"failure {failures} (limit {gates.failure_limit}), {in_a_row} in a row "
                f"(limit {gates.consecutive_failure_limit}): rolling back"
            )
            return Judgement(Verdict.ROLLBACK, Outcome.FAIL, tuple(reasons), after, evidence)
        return Judgement(Verdict.HOLD, Outcome.FAIL, tuple(reasons), after, evidence)

    after = replace(progress, consecutive_failures=0, inconclusive=0)
    last = progress.step + 1 >= len(progress.steps) or progress.steps[progress.step + 1] >= 100
    if last:
        return Judgement(Verdict.PROMOTE, Outcome.PASS, ("all gates passed at the last step",), after, evidence)
    after = replace(after, step=progress.step + 1)
    return Judgement(
        Verdict.ADVANCE, Outcome.PASS,
        (f"all gates passed; {progress.weight}% → {after.weight}%",), after, evidence,
    )


def _inconclusive(progress: Progress, gates: Gates, reason: str, evidence: dict[str, Any]) -> Judgement:
    count = progress.inconclusive + 1
    after = replace(progress, inconclusive=count)
    if count >= gates.max_inconclusive:
        return Judgement(
            Verdict.PAUSE, Outcome.INCONCLUSIVE,
            (reason, f"{count} inconclusive windows in a row: paused (resume when traffic allows)"),
            after, evidence,
        )
    return Judgement(Verdict.HOLD, Outcome.INCONCLUSIVE, (reason,), after, evidence)
