"""scripts/bench/gpu.py's pure parts: the bars and gpu.md, from a small made-up results dict.

The GPU run itself happens on a lent machine (scripts/bench/gpu_device.sh); what it
computes from its numbers must be right before it gets there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts" / "bench"))

import gpu

ROOT = Path(__file__).resolve().parents[3]


def run(rows_per_s: float, p50: float = 1.0, p99: float = 2.0) -> dict[str, Any]:
    return {"rows_per_s": rows_per_s, "p50": p50, "p99": p99, "codes": {"OK": 100}, "requests": 100}


def record(model: str, batching: str, concurrency: int, rows: int, values: list[float]) -> dict[str, Any]:
    return {
        "model": model,
        "batching": batching,
        "concurrency": concurrency,
        "batch_rows": rows,
        "label": f"c{concurrency}",
        "runs": [run(v) for v in values],
    }


def served(*records: dict[str, Any]) -> dict[str, Any]:
    return {gpu.point_key(r["model"], r["batching"], r["concurrency"], r["batch_rows"]): r for r in records}


@pytest.fixture
def results() -> dict[str, Any]:
    """Engine: batch 1 → 1,000 rows/s, best (64) → 8,000 (8×). Served: see each test."""
    engine_runs = [{1: 1000.0, 32: 6000.0, 64: 8000.0}, {1: 900.0, 32: 6200.0, 64: 7900.0}]
    engine_runs.append({"1": 1100.0, "32": 5800.0, "64": 8100.0})  # keys as they come back from JSON
    return {
        "meta": {"started": "now", "took_s": 100, "commit": "abc1234", "packages": {"torch": "2.11.0"}, "gpu": {}},
        "settings": {
            "device": "cuda",
            "quick": False,
            "budget_s": 300,
            "engine_repeats": 3,
            "engine_seconds": 1.0,
            "served_repeats": 2,
            "duration_s": 3.0,
            "warmup_s": 1.0,
            "client_processes": 4,
            "max_batch": 64,
            "overhead_batch": 32,
        },
        "verify": {"engine in-process": {"min_cosine": 0.99999, "ok": True}, "served": {"error": "boom"}},
        "engine": {
            gpu.MINILM: {"model": gpu.MINILM, "version": "1", "backend": "torchscript", "runs": engine_runs},
        },
        "served": served(
            record(gpu.MINILM, "off", 1, 1, [500.0, 520.0]),
            record(gpu.MINILM, "on", 64, 1, [3600.0, 3700.0]),
            record(gpu.MINILM, "off", gpu.OVERHEAD_CONCURRENCY, 32, [5400.0, 5300.0]),
            record(gpu.MINILM, "on", 256, 1, []),
        ),
        "skipped": ["served on/minilm_gpu/c256 round 1"],
        "errors": [],
    }


def test_served_vs_in_process_at_the_same_batch(results: dict[str, Any]) -> None:
    bar = gpu.bar_overhead(results)
    # median served 5,350 against the engine's batch-32 median 6,000
    assert bar["measured"].startswith("0.89 (5,350 vs 6,000 rows/s)")
    assert bar["status"] == "met"
    results["served"][gpu.point_key(gpu.MINILM, "off", gpu.OVERHEAD_CONCURRENCY, 32)]["runs"] = [run(4000.0)]
    assert gpu.bar_overhead(results)["status"] == "**missed**"


def test_batching_gain_captured(results: dict[str, Any]) -> None:
    bar = gpu.bar_capture(results, gpu.MINILM, gpu.CAPTURE_BAR)
    # served: 3,650 / 510 = 7.16×; engine: 8,000 / 1,000 = 8×; captured 0.89
    assert bar["measured"].startswith("0.89 (served on c64 / off c1 = 7.16×; engine batch 64 / batch 1 = 8.00×)")
    assert bar["status"] == "**missed**"


def test_engine_gain_and_missing_points_are_reported_not_raised(results: dict[str, Any]) -> None:
    gain = gpu.bar_engine_gain(results)
    assert gain["measured"].startswith("8.0×") and gain["status"] == "info"
    digits = gpu.bar_capture(results, gpu.DIGITS, None)
    assert digits["measured"] == "–" and digits["status"] == "info"
    assert gpu.bar_instances(results)["measured"] == "–"
    results["served"] = {}
    assert gpu.bar_overhead(results)["status"] == "not measured"
    assert gpu.bar_capture(results, gpu.MINILM, gpu.CAPTURE_BAR)["status"] == "not measured"


def test_markdown_has_every_section_and_the_numbers(results: dict[str, Any]) -> None:
    text = gpu.render_markdown(results)
    for heading in ("## Machine and versions", "## The bars", "## Correctness", "## 1. Engines", "## 2. The worker"):
        assert heading in text
    assert "| 64 | 8,000 [7,900–8,100] |" in text  # engine median [min–max], JSON-style keys included
    assert "| minilm_gpu | on | 64 | 1 | 4 | 3,650 [3,600–3,700] |" in text  # 4 clients, from the settings
    assert "| minilm_gpu | on | 256 | 1 | 4 | – | – | – | – | – | not measured |" in text
    assert "## 3. Load over the worker processes" in text and "Not recorded." in text
    assert "failed: boom" in text and "0.999990" in text
    assert "skipped for time: served on/minilm_gpu/c256 round 1" in text


def test_quick_plan_keeps_the_bar_points_first() -> None:
    full = gpu.point_plan(quick=False, overhead_batch=32)
    quick = gpu.point_plan(quick=True, overhead_batch=16)
    assert full[:3] == [
        (gpu.MINILM, "off", 1, 1),
        (gpu.MINILM, "on", 64, 1),
        (gpu.MINILM, "off", gpu.OVERHEAD_CONCURRENCY, 32),
    ]
    assert quick[2] == (gpu.MINILM, "off", gpu.OVERHEAD_CONCURRENCY, 16) and len(quick) < len(full)


def test_minilm_config_is_the_example_on_torchscript() -> None:
    config = gpu.minilm_config("cuda", max_batch=16, instances=2)
    assert (config["backend"], config["device"], config["instances"]) == ("torchscript", "cuda", 2)
    assert config["dynamic_batching"]["preferred_batch_sizes"] == [16]
    assert config["handler"] == "handler.py" and config["max_batch_size"] == 16


def test_cosines() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(gpu.cosines(a, a * 3), [1.0, 1.0])
    np.testing.assert_allclose(gpu.cosines(a, np.array([[0.0, 2.0], [1.0, 1.0]])), [0.0, 1.0])


def test_budget_lists_what_it_skips() -> None:
    budget = gpu.Budget(10.0, reserve_s=5.0)
    assert budget.allows(1.0, "small")
    assert not budget.allows(6.0, "big")
    assert budget.skipped == ["big"]


class FakeServer:
    address = "127.0.0.1:1"


def full_args(**overrides: Any) -> Any:
    args = gpu.parse_args(["--device", "cpu"])
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


def test_priming_visits_each_worker_and_model_once_at_its_busiest(monkeypatch: pytest.MonkeyPatch) -> None:
    primed: list[tuple[str, int, float, int]] = []

    def fake_measure(point: Any, settings: Any) -> dict[str, Any]:
        primed.append((point.key, point.concurrency, settings.warmup_s, settings.client_processes))
        return run(1.0)

    monkeypatch.setattr(gpu, "measure_point", fake_measure)
    args = full_args()
    kinds = gpu.worker_kinds(args)
    plan = gpu.point_plan(quick=False, overhead_batch=32)
    points = gpu.make_points(plan, {kind: FakeServer() for _, kind, _, _ in plan}, kinds)  # type: ignore[misc]
    gpu.prime(points, args, gpu.Budget(1000.0))
    assert sorted(primed) == [
        ("off/minilm_gpu/c1", 1, 0.0, 1),
        ("on/digits/c64", 64, 0.0, 4),
        ("on/minilm_gpu/c256", 256, 0.0, 4),
        ("procs-wide/digits/c512", 512, 0.0, 16),
        ("procs-wide/minilm_gpu/c512", 512, 0.0, 16),
        ("procs/digits/c256", 256, 0.0, 8),
        ("procs/minilm_gpu/c256", 256, 0.0, 8),
    ]


def test_plan_asks_for_8_processes_and_the_overhead_bar_with_2_instances_and_2_processes() -> None:
    args = full_args()
    kinds = gpu.worker_kinds(args)
    plan = gpu.point_plan(quick=False, overhead_batch=32)
    assert len(set(plan)) == len(plan) and {kind for _, kind, _, _ in plan} <= set(kinds)
    assert (kinds[gpu.PROCS_WIDE].processes, kinds[gpu.PROCS_WIDE].clients) == (8, 16)
    assert (kinds[gpu.PROCS].processes, kinds[gpu.PROCS].clients) == (4, 8)
    assert (kinds[gpu.OFF_PROCS].processes, kinds[gpu.OFF_PROCS].batching) == (2, False)
    for model in (gpu.MINILM, gpu.DIGITS):
        assert (model, gpu.PROCS_WIDE, 512, 1) in plan
    for model, kind in ((gpu.MINILM_X2, gpu.OFF_X2), (gpu.MINILM, gpu.OFF_PROCS), (gpu.MINILM, gpu.OFF)):
        assert (model, kind, 8, 32) in plan
    assert (gpu.MINILM_X2, gpu.OFF_X2, 4, 32) in plan and (gpu.MINILM, gpu.OFF_PROCS, 4, 32) in plan
    # the new questions come right after the bars' points, so a short run answers them first
    assert plan[3] == (gpu.MINILM, gpu.PROCS_WIDE, 512, 1)
    # the quick plan touches every kind once
    quick = gpu.point_plan(quick=True, overhead_batch=16)
    assert {kind for _, kind, _, _ in quick} == set(kinds)


def test_clients_are_capped_by_the_concurrency() -> None:
    args = full_args()
    kinds = gpu.worker_kinds(args)
    plan = [(gpu.MINILM, gpu.OFF_PROCS, 4, 32), (gpu.MINILM, gpu.OFF_PROCS, 8, 32), (gpu.MINILM, gpu.OFF, 8, 32)]
    points = gpu.make_points(plan, {k: FakeServer() for _, k, _, _ in plan}, kinds)  # type: ignore[misc]
    assert [gpu.clients_for(p, args) for p in points] == [4, 8, 4]


def test_workers_start_per_kind_with_the_models_the_plan_sends_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    launched: dict[str, tuple[list[str], tuple[str, ...]]] = {}
    monkeypatch.setattr(gpu, "make_repository", lambda root, source, model, version, batching: root / str(batching))

    def fake_launch(name: str, repo: Path, models: list[str], log_dir: Path, extra: Any = ()) -> str:
        launched[name] = (list(models), tuple(extra))
        return name

    monkeypatch.setattr(gpu, "launch_worker", fake_launch)
    kinds = gpu.worker_kinds(full_args())
    servers = gpu.start_workers(tmp_path, tmp_path, tmp_path, gpu.point_plan(False, 32), kinds)
    assert set(servers) == set(kinds)
    assert launched["worker-batching-off"] == ([gpu.MINILM], ())
    assert launched["worker-batching-on"] == ([gpu.MINILM, gpu.DIGITS], ())
    assert launched["worker-off-x2"] == ([gpu.MINILM_X2], ())
    assert launched["worker-procs-wide-8-processes"] == ([gpu.MINILM, gpu.DIGITS], ("--processes", "8"))
    assert launched["worker-off-procs-2-processes"] == ([gpu.MINILM], ("--processes", "2"))


@pytest.fixture
def wide(results: dict[str, Any]) -> dict[str, Any]:
    """The fixture as a run of this version: kinds recorded, 4- and 8-process points, overhead information."""
    results["settings"]["workers"] = {
        k: {"batching": v.batching, "processes": v.processes, "clients": v.clients}
        for k, v in gpu.worker_kinds(full_args()).items()
    }
    results["served"].update(
        served(
            record(gpu.MINILM, gpu.ON, 256, 1, [3000.0]),
            record(gpu.MINILM, gpu.PROCS, 256, 1, [7000.0, 7200.0]),
            record(gpu.MINILM, gpu.PROCS_WIDE, 256, 1, [7500.0]),
            record(gpu.MINILM, gpu.PROCS_WIDE, 512, 1, [8000.0, 8400.0]),
            record(gpu.DIGITS, gpu.ON, 1, 1, [600.0]),
            record(gpu.DIGITS, gpu.ON, 64, 1, [2800.0]),
            record(gpu.DIGITS, gpu.PROCS, 256, 1, [10000.0]),
            record(gpu.DIGITS, gpu.PROCS_WIDE, 512, 1, []),
            record(gpu.MINILM, gpu.OFF, 8, 32, [5500.0]),
            record(gpu.MINILM_X2, gpu.OFF_X2, 4, 32, [5700.0]),
            record(gpu.MINILM_X2, gpu.OFF_X2, 8, 32, [6600.0]),
            record(gpu.MINILM, gpu.OFF_PROCS, 4, 32, [6000.0]),
        )
    )
    return results


def test_overhead_information_rows_follow_the_bar(wide: dict[str, Any]) -> None:
    rows = gpu.bars(wide)
    assert rows[0] == gpu.bar_overhead(wide)  # the bar itself, defined as before
    assert rows[0]["measured"].startswith("0.89 (5,350 vs 6,000 rows/s)")
    one, two, procs = rows[1:4]
    assert one["bar"].startswith("minilm_gpu, 1 instance, 1 process,") and "8 in flight)" in one["bar"]
    assert one["measured"] == "8 in flight: 0.92 (5,500 vs 6,000 rows/s)" and one["status"] == "info"
    assert two["bar"].startswith("minilm_gpu_x2, 2 instances, 1 process,") and "4 and 8 in flight" in two["bar"]
    assert two["measured"] == "4 in flight: 0.95 (5,700 vs 6,000 rows/s); 8 in flight: 1.10 (6,600 vs 6,000 rows/s)"
    # only the planned concurrencies: this made-up run has no off-procs c8
    assert procs["bar"].startswith("minilm_gpu, 1 instance in each of 2 worker processes,")
    assert procs["measured"] == "4 in flight: 1.00 (6,000 vs 6,000 rows/s)"
    assert rows[4]["bar"] == gpu.bar_capture(wide, gpu.MINILM, gpu.CAPTURE_BAR)["bar"]


def test_multi_process_rows_take_the_best_point_of_each_process_count(wide: dict[str, Any]) -> None:
    rows = {r["bar"]: r for r in gpu.bars(wide)}
    capture = [r for r in rows.values() if "processes" in r["bar"] and "captures" in r["bar"]]
    assert len(capture) == 1  # the best multi-process point: 8 processes at c512 (8,200 rows/s)
    assert capture[0]["bar"].endswith("at 512 in flight, on, 8 processes")
    assert capture[0]["measured"].startswith("2.01 (served on, 8 processes c512 / off c1 = 16.08×; engine batch 64")
    four = rows["minilm_gpu, 4 worker processes vs 1, batching on, each at its best concurrency"]
    eight = rows["minilm_gpu, 8 worker processes vs 1, batching on, each at its best concurrency"]
    assert four["measured"] == "1.95× (7,100 rows/s at c256 vs 3,650 at c64)"
    assert eight["measured"] == "2.25× (8,200 rows/s at c512 vs 3,650 at c64)"
    assert rows["digits, 4 worker processes vs 1, batching on, each at its best concurrency"]["measured"].startswith(
        "3.57×"
    )
    assert rows["digits, 8 worker processes vs 1"]["measured"] == "–"  # planned, not measured
    order = [r["bar"] for r in gpu.bars(wide)]
    assert order.index(four["bar"]) < order.index(eight["bar"])


def test_labels_and_clients_for_old_and_new_results(results: dict[str, Any], wide: dict[str, Any]) -> None:
    old = {"settings": {"worker_processes": 4, "procs_clients": 8, "client_processes": 4}}
    assert gpu.batching_label(gpu.PROCS, old) == "on, 4 processes"
    assert gpu.batching_label(gpu.ON, old) == "on"
    assert gpu.batching_label(gpu.PROCS_WIDE, wide) == "on, 8 processes"
    assert gpu.batching_label(gpu.OFF_PROCS, wide) == "off, 2 processes"
    assert gpu.batching_label(gpu.OFF_X2, wide) == "off"
    record_old = record(gpu.MINILM, gpu.PROCS, 64, 1, [1.0])
    assert gpu.clients_of(record_old, old) == 8
    record_new = record(gpu.MINILM, gpu.PROCS_WIDE, 512, 1, [1.0])
    record_new["runs"][0]["client_processes"] = 16
    assert gpu.clients_of(record_new, wide) == 16


def test_spread_section_shows_each_process_and_the_idle_ones(wide: dict[str, Any]) -> None:
    runs = wide["served"][gpu.point_key(gpu.MINILM, gpu.PROCS_WIDE, 512, 1)]["runs"]
    runs[0].update(process_cores=[1.5, 1.4, 1.2, 1.0, 0.9, 0.8, 0.01, 0.0], machine_busy=0.97, client_processes=16)
    text = gpu.render_markdown(wide)
    assert (
        "| minilm_gpu | on, 8 processes | 512 | 16 | 1 | 8,000 | 97% | 1.50 1.40 1.20 1.00 0.90 0.80 0.01 0.00 | 2 |"
        in text
    )
    assert "on, 8 processes with up to 16 client processes" in text  # the CPU split, in the settings row


def test_served_rounds_skip_what_no_longer_fits_and_run_what_still_does(monkeypatch: pytest.MonkeyPatch) -> None:
    args = full_args(served_repeats=2, warmup=1.0, duration=3.0)
    kinds = gpu.worker_kinds(args)
    plan = [(gpu.MINILM, gpu.OFF, 1, 1), (gpu.DIGITS, gpu.ON, 1, 1)]
    points = gpu.make_points(plan, {k: FakeServer() for _, k, _, _ in plan}, kinds)  # type: ignore[misc]
    clock = [0.0]
    monkeypatch.setattr(gpu.time, "monotonic", lambda: clock[0])

    def fake_measure(point: Any, settings: Any) -> dict[str, Any]:
        clock[0] += 30.0 if point.model == gpu.MINILM else 5.0  # minilm turns out slow
        return run(1.0)

    monkeypatch.setattr(gpu, "measure_with_cpu", fake_measure)
    results: dict[str, Any] = {"served": {}}
    checkpoints = []
    budget = gpu.Budget(60.0, reserve_s=5.0, started=0.0)
    gpu.served_rounds(points, args, budget, results, on_point=lambda: checkpoints.append(clock[0]))
    # round 1: both (30 + 5 s); round 2: minilm's own 30 s no longer fits in 25 s, digits' 5 s does
    assert [len(r["runs"]) for r in results["served"].values()] == [1, 2]
    assert budget.skipped == ["served off/minilm_gpu/c1 round 2"]
    assert checkpoints == [30.0, 35.0, 40.0]


def test_the_committed_results_render_with_their_own_bars() -> None:
    current = json.loads((ROOT / "docs" / "benchmarks" / "gpu_results.json").read_text())
    assert {b["bar"]: b for b in gpu.bars(current)} == {b["bar"]: b for b in current["bars"]}
    assert "## The bars" in gpu.render_markdown(current)


def test_old_results_still_render(tmp_path: Path) -> None:
    # The first GPU run's results (docs/benchmarks/gpu_results.json before 8-process points).
    old = json.loads((Path(__file__).parent / "data" / "gpu_results_first_version.json").read_text())
    assert "workers" not in old["settings"]  # made before this version: the compatibility path
    stored = {b["bar"]: b for b in old["bars"]}
    recomputed = {b["bar"]: b for b in gpu.bars(old)}
    assert recomputed == stored  # the same rows and figures (the order may differ)
    text = gpu.render_markdown(old)
    assert "| minilm_gpu | on, 4 processes | 256 | 1 | 8 | 7,541 [6,804–8,277] |" in text
    assert "Everything planned was measured." in text


def test_an_interrupted_run_still_writes_what_it_measured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fake_run(args: Any, budget: Any, scratch: Path, results: dict[str, Any], servers: dict[str, Any]) -> None:
        results["served"].update(served(record(gpu.MINILM, gpu.OFF, 1, 1, [250.0])))
        gpu.write_checkpoint(results, budget, args.out)
        checkpoint = json.loads((args.out / "gpu_results.json").read_text())
        assert checkpoint["partial"] and "a checkpoint" in (args.out / "gpu.md").read_text()
        raise KeyboardInterrupt("signal 15")

    monkeypatch.setattr(gpu, "run", fake_run)
    monkeypatch.setattr(gpu, "new_results", lambda args: {**gpu_results_skeleton(), "settings": settings_of(args)})
    monkeypatch.setattr(gpu, "plot", lambda results, path: None)
    assert gpu.main(["--device", "cpu", "--out", str(tmp_path), "--budget-s", "30"]) == 0
    written = json.loads((tmp_path / "gpu_results.json").read_text())
    assert "partial" not in written and written["errors"] == ["interrupted (signal 15)"]
    assert written["served"]["off/minilm_gpu/c1"]["runs"][0]["rows_per_s"] == 250.0
    assert "| minilm_gpu | off | 1 | 1 | 1 | 250 |" in (tmp_path / "gpu.md").read_text()


def gpu_results_skeleton() -> dict[str, Any]:
    return {"meta": {"started": "now"}, "verify": {}, "engine": {}, "served": {}, "skipped": [], "errors": []}


def settings_of(args: Any) -> dict[str, Any]:
    keys = ("device", "quick", "budget_s", "engine_repeats", "engine_seconds", "served_repeats", "client_processes")
    settings = {k: getattr(args, k) for k in keys}
    settings.update(duration_s=args.duration, warmup_s=args.warmup, overhead_batch=args.overhead_batch)
    return settings
