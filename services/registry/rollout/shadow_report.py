"""The shadow report (issue 14 §5): how a shadow version's outputs compare with the primary's.

A pure function of the window's ``ShadowStats``: agreement within rtol/atol and, for
classifier outputs, the label flip rate, each with a 95 % Wilson interval (statsmodels
``proportion_confint``) so a handful of mirrors is not read as certainty; the distribution
of the largest absolute difference; shadow against primary latency from the histograms.
"""

from __future__ import annotations

import json
import math
from typing import Any

from services.common import version_windows as vw


def _wilson(successes: int, total: int) -> tuple[float, float]:
    from statsmodels.stats.proportion import proportion_confint

    if total == 0:
        return math.nan, math.nan
    low, high = proportion_confint(successes, total, alpha=0.05, method="wilson")
    return float(low), float(high)


def summarise(version: str, stats: vw.ShadowStats, samples: list[bytes]) -> dict[str, Any]:
    """The fields of one ``ShadowVersionReport``."""
    agreement = stats.agree / stats.compared if stats.compared else math.nan
    low, high = _wilson(stats.agree, stats.compared)
    flip_rate = stats.argmax_flips / stats.argmax_rows if stats.argmax_rows else math.nan
    _, flip_high = _wilson(stats.argmax_flips, stats.argmax_rows)
    bounds = [*vw.DIFF_BOUNDS, math.inf]
    diffs = [{"upper": bounds[i], "count": n} for i, n in enumerate(stats.diffs) if n]
    parsed = []
    for raw in samples:
        try:
            parsed.append(json.loads(raw))
        except ValueError:
            continue
    return {
        "version": version, "compared": stats.compared, "agree": stats.agree, "errors": stats.errors,
        "agreement": agreement, "agreement_low": low, "agreement_high": high,
        "argmax_rows": stats.argmax_rows, "argmax_flips": stats.argmax_flips, "flip_rate": flip_rate,
        "flip_rate_high": flip_high, "max_abs_diff": diffs,
        "shadow_p50_ms": stats.shadow_latency.quantile_ms(0.5), "shadow_p99_ms": stats.shadow_latency.quantile_ms(0.99),
        "primary_p50_ms": stats.primary_latency.quantile_ms(0.5),
        "primary_p99_ms": stats.primary_latency.quantile_ms(0.99),
        "samples": parsed,
    }
