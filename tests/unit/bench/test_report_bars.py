"""The report's open-loop bar: judged only where the load was in fact 90 % of capacity."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts" / "bench"))

import report_bars


def open_point(rate: float, completed: float, p50: float, p99: float) -> dict:
    run = {"rows_per_s": completed, "throughput_rps": completed, "p50": p50, "p99": p99, "duration_s": 4.0}
    return {"rate": rate, "runs": [run, run, run]}


def test_a_point_that_kept_up_is_judged_on_its_tail():
    met = report_bars._open_loop_bar("digits", open_point(1000, 995, 5.0, 14.0))
    assert met["status"] == "met" and met["measured"].startswith("p99/p50 = 2.8")
    missed = report_bars._open_loop_bar("digits", open_point(1000, 990, 5.0, 16.0))
    assert missed["status"] == "**missed**"


def test_an_overloaded_point_is_not_a_measurement_of_bursts():
    # The queue grew all run: p50 and p99 are both the run's length, and their ratio looks fine.
    bar = report_bars._open_loop_bar("digits", open_point(2287, 1445, 638.5, 786.2))
    assert bar["status"] == "not measured"
    assert bar["measured"].startswith("overloaded: 1,445 of 2,287 req/s offered completed")


def test_a_missing_point_is_not_measured():
    assert report_bars._open_loop_bar("minilm", None)["status"] == "not measured"


def test_kept_up_allows_poisson_noise_and_no_more():
    from report_measure import kept_up

    # 1,000/s for 4 s: 4,000 arrivals, sd 63; three sd is 190 calls, 47.4/s.
    assert kept_up(1000, 960, 4.0)
    assert not kept_up(1000, 945, 4.0)
    # Fewer arrivals, more relative noise: 250/s for 4 s may complete 8 % less and still have kept up.
    assert kept_up(250, 230, 4.0)
    assert not kept_up(250, 220, 4.0)
