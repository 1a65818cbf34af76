"""Stats and merging: exact percentiles, exact merges, stable report keys."""

from __future__ import annotations

import numpy as np
import pytest

from services.bench.stats import (
    ProcessResult,
    format_table,
    latency_summary_ms,
    merge,
    nearest_rank,
    summarize,
)


def result(latencies_ms: list[float], codes: dict[str, int], last_done: float = 0.0, unsent: int = 0):
    return ProcessResult(
        ok_latencies_s=np.array(latencies_ms, dtype=np.float64) / 1000.0,
        codes=codes,
        last_done=last_done,
        unsent=unsent,
    )


def test_nearest_rank_picks_observed_samples():
    values = np.arange(1.0, 101.0)  # 1..100
    assert nearest_rank(values, 50) == 50.0
    assert nearest_rank(values, 99) == 99.0
    assert nearest_rank(values, 100) == 100.0
    assert nearest_rank(values, 0) == 1.0
    assert nearest_rank(np.array([7.0]), 99) == 7.0
    # Between samples it rounds up to a real observation, never interpolates.
    assert nearest_rank(np.array([1.0, 2.0, 3.0, 4.0]), 60) == 3.0
    with pytest.raises(ValueError):
        nearest_rank(np.array([]), 50)


def test_merge_equals_one_big_run():
    rng = np.random.default_rng(3)
    samples = rng.lognormal(1.0, 0.7, size=10_000)
    parts = np.array_split(samples, 4)
    per_process = [result(list(p), {"OK": len(p)}, last_done=float(i)) for i, p in enumerate(parts)]
    merged = merge(per_process)
    whole = latency_summary_ms(samples / 1000.0)
    assert latency_summary_ms(merged.ok_latencies_s) == whole
    assert merged.requests == 10_000
    assert merged.last_done == 3.0
    assert whole["p99"] == pytest.approx(float(np.percentile(samples, 99, method="inverted_cdf")))


def test_merge_adds_codes_and_unsent():
    merged = merge(
        [
            result([1.0, 2.0], {"OK": 2, "UNAVAILABLE": 1}, unsent=3),
            result([3.0], {"OK": 1, "DEADLINE_EXCEEDED": 2}, unsent=1),
        ]
    )
    assert merged.codes == {"OK": 3, "UNAVAILABLE": 1, "DEADLINE_EXCEEDED": 2}
    assert merged.requests == 6
    assert merged.ok == 3
    assert merged.unsent == 4


def test_merge_of_nothing_is_empty():
    merged = merge([])
    assert merged.requests == 0
    assert len(merged.ok_latencies_s) == 0


def test_summary_has_stable_keys_and_counts():
    merged = merge([result([1.0, 2.0, 3.0, 4.0], {"OK": 4, "UNAVAILABLE": 2}, last_done=12.5)])
    report = summarize(merged, measure_start=10.0, measure_end=12.0, batch_rows=8, extra={"mode": "closed"})
    assert set(report) >= {
        "requests",
        "rows",
        "duration_s",
        "throughput_rps",
        "rows_per_s",
        "latency_ms",
        "codes",
    }
    assert set(report["latency_ms"]) == {"min", "p50", "p90", "p95", "p99", "max", "mean"}
    assert report["requests"] == 6
    assert report["rows"] == 32  # only OK calls' rows count
    # The last counted call finished after the window: duration stretches to it.
    assert report["duration_s"] == pytest.approx(2.5)
    assert report["throughput_rps"] == pytest.approx(6 / 2.5)
    assert report["rows_per_s"] == pytest.approx(32 / 2.5)
    assert report["latency_ms"]["min"] == pytest.approx(1.0)
    assert report["latency_ms"]["p50"] == pytest.approx(2.0)
    assert report["latency_ms"]["max"] == pytest.approx(4.0)
    assert report["latency_ms"]["mean"] == pytest.approx(2.5)
    assert list(report["codes"]) == ["OK", "UNAVAILABLE"]  # OK first
    assert report["mode"] == "closed"


def test_summary_with_no_ok_calls_has_null_latency():
    merged = merge([result([], {"UNAVAILABLE": 5})])
    report = summarize(merged, measure_start=0.0, measure_end=1.0, batch_rows=1)
    assert report["latency_ms"]["p99"] is None
    assert report["rows"] == 0
    text = format_table(report)
    assert "UNAVAILABLE" in text and "p99" in text


def test_table_shows_every_field():
    merged = merge([result([1.0, 5.0], {"OK": 2}, unsent=7)])
    report = summarize(merged, measure_start=0.0, measure_end=1.0, batch_rows=1, extra={"unsent": 7})
    text = format_table(report)
    for word in ("Requests", "Throughput", "Rows/s", "min", "p50", "p90", "p95", "p99", "max", "OK", "Unsent"):
        assert word in text
