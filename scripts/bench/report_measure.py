"""Measurement points, interleaved rounds, and the median [min–max] of each figure.

A point is one `shunter bench` call: a target, a model and a load (closed loop at a
concurrency, or open loop at a rate). Points of one section are measured in rounds: each
round visits every point once, and each round starts one point further along, so slow
drift on a shared machine (another job, thermal throttling) spreads over every system
instead of landing on whichever came last. A figure is the median of the rounds, shown
with its min and max.

CPU per request is the CPU time of the server's processes (the whole tree: worker,
router, registry, Redis for a cluster) over the bench call, divided by the requests the
call sent (measured window plus warm-up, at the measured rate). The client's own CPU
share says whether the load generator, not the server, was the limit.
"""

from __future__ import annotations

import logging
import math
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from report_servers import Server

from services.bench import BenchError, BenchOptions, run_bench

logger = logging.getLogger("bench.report")

METRICS = ("rows_per_s", "throughput_rps", "p50", "p90", "p95", "p99", "mean")


@dataclass(frozen=True)
class Settings:
    runs: int
    duration_s: float
    warmup_s: float
    client_processes: int
    timeout_s: float = 30.0


@dataclass
class Point:
    """One thing to measure in every round."""

    key: str
    section: str
    #: Who served it, as the tables show it: "Triton, 2 instances".
    system: str
    model: str
    #: "c64", "open 90%", "c4 × 64 rows", ...
    label: str
    server: Server | None
    target: str
    api_key: str | None = None
    concurrency: int = 1
    rate: float | None = None
    batch_rows: int = 1
    #: CPU accounting groups: name -> (server, command-line filter or None for the whole tree).
    cpu: dict[str, tuple[Server, str | None]] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)


def _client_cpu() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def measure(point: Point, settings: Settings) -> dict[str, Any]:
    """One bench call; a dict of figures, or {"error": why} (never raises for a bad point)."""
    if point.server is not None and not point.server.alive():
        return {"error": f"{point.server.name} is no longer running (exit code {point.server.proc.returncode})"}
    cpu_before = {name: srv.cpu_seconds(match) for name, (srv, match) in point.cpu.items()}
    client_before, started = _client_cpu(), time.monotonic()
    options = BenchOptions(
        target=point.target,
        model=point.model,
        concurrency=point.concurrency,
        rate=point.rate,
        duration_s=settings.duration_s,
        warmup_s=settings.warmup_s,
        api_key=point.api_key,
        processes=settings.client_processes,
        batch_rows=point.batch_rows,
        timeout_s=settings.timeout_s,
    )
    try:
        report = run_bench(options)
    except BenchError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # a report must survive one broken point
        logger.exception("bench call for %s failed", point.key)
        return {"error": f"{type(exc).__name__}: {exc}"}
    wall = time.monotonic() - started
    latency = report["latency_ms"] or {}
    codes = report["codes"]
    run: dict[str, Any] = {
        "rows_per_s": report["rows_per_s"],
        "throughput_rps": report["throughput_rps"],
        **{k: latency.get(k) for k in ("p50", "p90", "p95", "p99", "mean")},
        "requests": report["requests"],
        "duration_s": report["duration_s"],
        "codes": codes,
        "client_cpu": (_client_cpu() - client_before) / wall if wall > 0 else None,
    }
    if not codes.get("OK"):
        run["error"] = f"no call succeeded: {codes}"
    if point.rate is not None:
        run["unsent"] = report.get("unsent", 0)
        run["send_lag_p99_ms"] = (report.get("send_lag_ms") or {}).get("p99")
    sent = report["throughput_rps"] * (settings.warmup_s + report["duration_s"])
    if sent > 0:
        run["cpu_ms_per_request"] = {
            name: 1000 * (srv.cpu_seconds(match) - cpu_before[name]) / sent for name, (srv, match) in point.cpu.items()
        }
    return run


def run_rounds(points: list[Point], settings: Settings, results: dict[str, Any], title: str) -> None:
    """Measure every point ``settings.runs`` times, interleaved and rotated, into ``results``."""
    if not points:
        return
    total = len(points) * settings.runs
    done = 0
    started = time.monotonic()
    for point in points:
        results.setdefault(point.key, _record(point))
    for round_index in range(settings.runs):
        shift = round_index % len(points)
        for point in points[shift:] + points[:shift]:
            run = measure(point, settings)
            results[point.key]["runs"].append(run)
            done += 1
            elapsed = time.monotonic() - started
            eta = elapsed / done * (total - done)
            print(
                f"  [{title} {done}/{total}, ~{eta:.0f} s left] {point.system}, {point.model} {point.label}: "
                f"{_describe(run)}",
                flush=True,
            )


def _record(point: Point) -> dict[str, Any]:
    return {
        "section": point.section,
        "system": point.system,
        "model": point.model,
        "label": point.label,
        "concurrency": point.concurrency if point.rate is None else None,
        "rate": point.rate,
        "batch_rows": point.batch_rows,
        "tags": point.tags,
        "runs": [],
    }


def _describe(run: dict[str, Any]) -> str:
    if "error" in run and run.get("rows_per_s") is None:
        return f"FAILED: {run['error'].splitlines()[0][:200]}"
    text = f"{run['rows_per_s']:.0f} rows/s, p50 {_ms(run['p50'])}, p99 {_ms(run['p99'])}"
    cpu = run.get("cpu_ms_per_request")
    if cpu:
        text += ", CPU " + ", ".join(f"{name} {value:.2f}" for name, value in cpu.items()) + " ms/req"
    bad = {k: v for k, v in run["codes"].items() if k != "OK"}
    if bad:
        text += f", errors {bad}"
    return text


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


# ---------------------------------------------------------------- aggregation


def ok_runs(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in record.get("runs", []) if r.get("rows_per_s") is not None and "error" not in r]


def summary(values: list[float | None]) -> dict[str, float] | None:
    clean = [v for v in values if v is not None]
    if not clean:
        return None
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean), "n": len(clean)}


def stat(record: dict[str, Any] | None, metric: str, cpu_group: str | None = None) -> dict[str, float] | None:
    """Median/min/max of one metric over a point's successful runs (None if none)."""
    if not record:
        return None
    runs = ok_runs(record)
    if cpu_group is not None:
        return summary([(r.get("cpu_ms_per_request") or {}).get(cpu_group) for r in runs])
    return summary([r.get(metric) for r in runs])


def kept_up(offered_rps: float, completed_rps: float, duration_s: float) -> bool:
    """Whether an open-loop run completed what it was offered, within Poisson noise.

    Arrivals in ``duration_s`` at ``offered_rps`` vary by about sqrt(n); a run that
    completed more than three of those standard deviations less than it was offered had
    a queue that grew all run: overloaded.
    """
    expected = offered_rps * duration_s
    if expected <= 0:
        return True
    return completed_rps * duration_s >= expected - 3 * math.sqrt(expected)


def median(record: dict[str, Any] | None, metric: str, cpu_group: str | None = None) -> float | None:
    s = stat(record, metric, cpu_group)
    return None if s is None else s["median"]


def first_error(record: dict[str, Any] | None) -> str | None:
    if not record:
        return None
    for run in record.get("runs", []):
        if "error" in run:
            return run["error"]
    return None
