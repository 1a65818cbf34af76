"""scripts/bench/gpu.py's pure parts: the bars and gpu.md, from a small made-up results dict.

The GPU run itself happens on a lent machine (scripts/bench/gpu_device.sh); what it
computes from its numbers must be right before it gets there.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts" / "bench"))

import gpu


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
    assert "| minilm_gpu | on | 64 | 1 | 3,650 [3,600–3,700] |" in text
    assert "| minilm_gpu | on | 256 | 1 | – | – | – | – | not measured |" in text
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


def test_priming_visits_each_worker_and_model_once_at_its_busiest(monkeypatch: pytest.MonkeyPatch) -> None:
    primed: list[tuple[str, int, float]] = []

    def fake_measure(point: Any, settings: Any) -> dict[str, Any]:
        primed.append((point.key, point.concurrency, settings.warmup_s))
        return run(1.0)

    monkeypatch.setattr(gpu, "measure_point", fake_measure)

    class FakeServer:
        address = "127.0.0.1:1"

    servers = {"off": FakeServer(), "on": FakeServer(), gpu.PROCS: FakeServer()}
    points = gpu.make_points(gpu.point_plan(quick=False, overhead_batch=32), servers)  # type: ignore[arg-type]
    args = type("Args", (), {"warmup": 1.0, "client_processes": 4, "procs_clients": 8})()
    gpu.prime(points, args, gpu.Budget(1000.0))  # type: ignore[arg-type]
    assert sorted(primed) == [
        ("off/minilm_gpu/c64", 64, 0.0),
        ("on/digits/c64", 64, 0.0),
        ("on/minilm_gpu/c256", 256, 0.0),
        ("on/minilm_gpu_x2/c256", 256, 0.0),
        ("procs/digits/c256", 256, 0.0),
        ("procs/minilm_gpu/c256", 256, 0.0),
    ]
