"""The bars of matrix.yaml judged from made-up results: met / missed / not measured / info."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts" / "bench"))

import matrix
import render


def run(rows: float, p50: float = 1.0, p99: float = 2.0, **extra: Any) -> dict[str, Any]:
    return {
        "rows_per_s": rows,
        "throughput_rps": rows,
        "p50": p50,
        "p99": p99,
        "duration_s": 4.0,
        "codes": {"OK": 10},
        **extra,
    }


def point(
    model: str,
    runs: list[dict[str, Any]],
    mode: str = "on",
    rows: int = 1,
    threads: int = 2,
    concurrency: int | None = 64,
    rate: float | None = None,
    system: str = "x",
) -> dict[str, Any]:
    return {
        "model": model,
        "system": system,
        "concurrency": concurrency,
        "rate": rate,
        "batch_rows": rows,
        "tags": {"batching": mode, "mode": mode},
        "engine_threads": threads,
        "runs": runs,
    }


def results(points: dict[str, Any], limit: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "settings": {"served_versions": {"minilm": "1", "digits": "2"}},
        "points": points,
        "engine": {"digits/v2": {"runs": [{"1": 100.0, "64": 3000.0}]}},
        "limit": limit or {},
    }


BARS = {bar["name"]: bar for bar in matrix.load()[0]["bars"]["cpu"]}


def bar(name: str) -> dict[str, Any]:
    return next(b for n, b in BARS.items() if n.startswith(name))


def test_served_vs_in_process_divides_by_as_many_threads_as_instances_at_the_batch_run():
    overhead = point("minilm", [run(480.0), run(500.0), run(470.0)], mode="off", rows=32, concurrency=4)
    limit = {"minilm/v1/t2": {"runs": [{"32": 600.0, "1": 400.0}, {"32": 560.0, "1": 380.0}]}}
    judged = render.judge(
        bar("minilm, served rows/s vs in-process"), results({"worker/off/minilm/overhead": overhead}, limit)
    )
    # median served 480 against the 2-thread median at batch 32, 580: 0.83 < 0.85
    assert judged["status"] == "**missed**"
    assert judged["measured"].startswith("0.83 (480 vs 580 rows/s; in-process 2 threads at batch 32")
    # Without the limit of the right thread count the bar is not measured, not judged on one thread.
    other = {"minilm/v1/t1": limit["minilm/v1/t2"]}
    assert (
        render.judge(bar("minilm, served rows/s"), results({"worker/off/minilm/overhead": overhead}, other))["status"]
        == "not measured"
    )


def test_capture_uses_the_batch_the_worker_formed_and_the_same_threads_on_both_sides():
    on = point("minilm", [run(540.0, inferences=1200, executions=100)])  # batches of 12 rows
    off = point("minilm", [run(300.0)], mode="off")
    limit = {"minilm/v1/t2": {"runs": [{"12": 600.0, "1": 400.0}]}}
    pts = {"worker/on/minilm/c64": on, "worker/off/minilm/c64": off}
    judged = render.judge(bar("minilm, dynamic batching"), results(pts, limit))
    # served gain 540/300 = 1.8; engine gain at batch 12 = 1.5; captured 1.2
    assert judged["status"] == "met"
    assert judged["measured"].startswith("1.20 (served on / off at c64 = 1.80×; in-process 2 threads, batch 12")
    limit["minilm/v1/t2"]["runs"][0]["12"] = 1000.0
    assert render.judge(bar("minilm, dynamic batching"), results(pts, limit))["status"] == "**missed**"
    assert render.judge(bar("digits, dynamic batching"), results(pts, limit))["status"] == "info"


def test_vs_best_takes_the_best_peer_and_checks_p99():
    pts = {
        "peers/shunter-worker/digits/c64": point("digits", [run(3000.0, p99=20.0)]),
        "peers/triton-1/digits/c64": point("digits", [run(1500.0, p99=40.0)], system="Triton, 1 instance"),
        "peers/triton-2/digits/c64": point("digits", [run(1900.0, p99=30.0)], system="Triton, 2 instances"),
    }
    judged = render.judge(bar("digits, 1-row requests, 64 in flight, worker alone vs Triton"), results(pts))
    assert judged["measured"] == "1.58× (3,000 vs 1,900 req/s, Triton, 2 instances); p99 20.0 vs 30.0 ms"
    assert judged["status"] == "met"
    pts["peers/shunter-worker/digits/c64"]["runs"][0]["p99"] = 31.0
    assert (
        render.judge(bar("digits, 1-row requests, 64 in flight, worker alone vs Triton"), results(pts))["status"]
        == "**missed**"
    )
    # The worker section stands in when the peers section did not measure Shunter.
    del pts["peers/shunter-worker/digits/c64"]
    pts["worker/on/digits/c64"] = point("digits", [run(2000.0, p99=10.0)])
    assert render.judge(bar("digits, 1-row requests, 64 in flight, worker alone vs Triton"), results(pts))[
        "measured"
    ].startswith("1.05×")


@pytest.mark.parametrize(
    ("completed", "p99", "status"), [(995, 14.0, "met"), (990, 16.0, "**missed**"), (700, 16.0, "not measured")]
)
def test_an_open_loop_point_is_judged_on_its_tail_only_if_it_kept_up(completed, p99, status):
    open90 = point("digits", [run(completed, p50=5.0, p99=p99)], rate=1000.0, concurrency=None)
    judged = render.judge(bar("digits, open loop"), results({"worker/on/digits/open90": open90}))
    assert judged["status"] == status
    if status == "not measured":
        assert judged["measured"].startswith("overloaded: 700 of 1,000 req/s offered completed")


def test_missing_figures_are_not_measured_and_differences_are_judged():
    assert render.judge(bar("router cache hit"), results({}))["status"] == "not measured"
    pts = {
        "router/router1/digits/c1": point("digits", [run(700, p50=1.2)]),
        "router/direct/digits/c1": point("digits", [run(900, p50=0.8)]),
    }
    judged = render.judge(bar("router hop, added p50"), results(pts))
    assert (judged["measured"], judged["status"]) == ("+0.40 ms", "**missed**")


def test_kept_up_allows_poisson_noise_and_no_more():
    # 1,000/s for 4 s: 4,000 arrivals, sd 63; three sd is 190 calls, 47.4/s.
    assert render.kept_up(1000, 960, 4.0) and not render.kept_up(1000, 945, 4.0)
    assert render.kept_up(250, 230, 4.0) and not render.kept_up(250, 220, 4.0)


def test_gpu_bars_ratio_of_bests_and_engine_gain():
    gpu = {bar["name"]: bar for bar in matrix.load()[0]["bars"]["gpu"]}
    pts = {
        "worker/procs/digits/c256": point("digits", [run(12000.0)], concurrency=256),
        "worker/on/digits/c64": point("digits", [run(3000.0)]),
        "worker/on/digits/c1": point("digits", [run(1000.0)], concurrency=1),
    }
    judged = render.judge(
        gpu["digits, 4 worker processes vs 1, batching on, each at its best concurrency"], results(pts)
    )
    assert judged["measured"] == "4.00× (12,000 rows/s at c256 vs 3,000 at c64)" and judged["status"] == "info"
    data = results({})
    data["engine"]["minilm_gpu/v1"] = {"runs": [{"1": 300.0, "64": 13500.0}]}
    assert render.judge(gpu["minilm_gpu, engine in-process, best batch / batch 1 rows/s"], data)["measured"].startswith(
        "45.0× (batch 64"
    )


def test_the_batch_bar_reads_the_mean_batch_the_worker_executed():
    on = point("tabular", [run(900.0, inferences=1500, executions=100), run(950.0, inferences=1400, executions=100)])
    judged = render.judge(bar("tabular, mean executed batch"), results({"worker/on/tabular/c64": on}))
    # (1500 + 1400) / 200 = 14.5 -> 14 rows (rounded), under the bar of 16
    assert (judged["measured"], judged["target"], judged["status"]) == ("14 rows", "≥ 16 rows", "**missed**")
    on["runs"][0]["inferences"] = 2000
    assert render.judge(bar("tabular, mean executed batch"), results({"worker/on/tabular/c64": on}))["status"] == "met"
    assert render.judge(bar("tabular, mean executed batch"), results({}))["status"] == "not measured"


def test_the_front_door_bar_divides_router_by_worker_cpu_run_by_run():
    runs = [
        run(1300.0, cpu_ms_per_request={"router": 0.60, "worker": 0.50}),  # 1.20
        run(1400.0, cpu_ms_per_request={"router": 0.50, "worker": 0.50}),  # 1.00
        run(1350.0, cpu_ms_per_request={"router": 0.55, "worker": 0.50}),  # 1.10
    ]
    stream = {"router/stream/digits/c64": point("digits", runs)}
    judged = render.judge(bar("router CPU per message, one ModelStreamInfer stream"), results(stream))
    assert (judged["measured"], judged["status"]) == ("1.10× (router 550 µs vs worker 500 µs)", "met")
    runs[2]["cpu_ms_per_request"]["router"] = 0.65  # the median run is now 1.20
    assert render.judge(bar("router CPU per message"), results(stream))["status"] == "**missed**"
    # A run without the worker's CPU is left out; none at all is not measured.
    for r in runs:
        del r["cpu_ms_per_request"]["worker"]
    assert render.judge(bar("router CPU per message"), results(stream))["status"] == "not measured"
