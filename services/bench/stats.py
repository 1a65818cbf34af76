"""What one client process measured, how processes' results merge, and the summary.

Each process keeps every OK call's latency (float64 seconds) rather than a histogram,
so merging is concatenation and the merged percentiles are exactly those of one big
run. At 8 bytes a call that is about 8 MB per million calls, cheap next to the run.
Percentiles use the nearest-rank definition, so each one is a latency that was really
observed (as HdrHistogram and ghz report them), never an interpolation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Percentiles reported, as keys of ``latency_ms``.
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99))


@dataclass
class ProcessResult:
    """One client process's measurements over the measured window.

    Times are ``time.monotonic()`` values, which on Linux come from one system-wide
    clock, so they compare across processes on the same host.
    """

    #: Latency in seconds of each call that returned OK.
    ok_latencies_s: np.ndarray
    #: Calls by final gRPC status code name (OK, UNAVAILABLE, ...).
    codes: dict[str, int]
    #: Monotonic time of the latest completion of a counted call (0.0 if none).
    last_done: float = 0.0
    #: Open loop: arrivals due inside the window that were dropped, never sent, because
    #: the in-flight cap was reached (the offered rate outran the server or the cap).
    unsent: int = 0
    #: Open loop: how late each counted call was sent after its scheduled time (seconds).
    send_lag_s: np.ndarray = field(default_factory=lambda: np.empty(0))
    #: With ``--users``: OK calls by (simulated user, version that answered).
    user_versions: dict[tuple[int, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class MergedResult:
    ok_latencies_s: np.ndarray
    codes: dict[str, int]
    last_done: float
    unsent: int
    send_lag_s: np.ndarray
    user_versions: dict[tuple[int, str], int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(self.codes.values())

    @property
    def ok(self) -> int:
        return self.codes.get("OK", 0)


def merge(results: Iterable[ProcessResult]) -> MergedResult:
    """Combine per-process results exactly (concatenate samples, add counts)."""
    results = list(results)
    codes: Counter[str] = Counter()
    user_versions: Counter[tuple[int, str]] = Counter()
    for result in results:
        codes.update(result.codes)
        user_versions.update(result.user_versions)
    empty = np.empty(0, dtype=np.float64)
    return MergedResult(
        ok_latencies_s=np.concatenate([r.ok_latencies_s for r in results] or [empty]).astype(np.float64),
        codes=dict(codes),
        last_done=max((r.last_done for r in results), default=0.0),
        unsent=sum(r.unsent for r in results),
        send_lag_s=np.concatenate([r.send_lag_s for r in results] or [empty]).astype(np.float64),
        user_versions=dict(user_versions),
    )


def users_summary(user_versions: Mapping[tuple[int, str], int], users: int,
                  value: Callable[[int], str]) -> dict[str, Any]:
    """What the simulated users saw: each one's OK calls by the version that answered.

    ``on_one_version`` counts users all of whose OK calls one version answered, which a
    sticky split promises; ``calls_by_version`` is the split as the users experienced it.
    """
    per_user: dict[str, dict[str, int]] = {value(u): {} for u in range(users)}
    by_version: Counter[str] = Counter()
    for (user, version), count in sorted(user_versions.items()):
        per_user[value(user)][version] = count
        by_version[version] += count
    return {
        "count": users,
        "on_one_version": sum(1 for seen in per_user.values() if len(seen) == 1),
        "calls_by_version": dict(sorted(by_version.items())),
        "versions": per_user,
    }


def nearest_rank(sorted_values: np.ndarray, percent: float) -> float:
    """The smallest sample with at least ``percent``% of samples at or below it."""
    count = len(sorted_values)
    if count == 0:
        raise ValueError("no samples")
    rank = int(np.ceil(percent / 100.0 * count))
    return float(sorted_values[min(max(rank, 1), count) - 1])


def latency_summary_ms(latencies_s: np.ndarray) -> dict[str, float | None]:
    """min, p50, p90, p95, p99, max and mean in milliseconds (None for no samples)."""
    keys = ["min", *(name for name, _ in PERCENTILES), "max", "mean"]
    if len(latencies_s) == 0:
        return dict.fromkeys(keys)
    ordered = np.sort(latencies_s) * 1000.0
    out: dict[str, float | None] = {"min": float(ordered[0])}
    for name, percent in PERCENTILES:
        out[name] = nearest_rank(ordered, percent)
    out["max"] = float(ordered[-1])
    out["mean"] = float(ordered.mean())
    return out


def summarize(
    merged: MergedResult,
    *,
    measure_start: float,
    measure_end: float,
    batch_rows: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as one JSON-ready dict with stable keys.

    ``duration_s`` runs from the start of the measured window to the later of its end
    and the last counted completion, so calls sent just before the end are counted with
    the time they took. ``throughput_rps`` counts every call (any status), like ghz;
    ``rows`` and ``rows_per_s`` count only rows that came back OK (goodput). Latency is
    over OK calls: fast rejections would otherwise pull the percentiles down.
    """
    duration = max(measure_end, merged.last_done) - measure_start
    duration = duration if duration > 0 else float("nan")
    rows = merged.ok * batch_rows
    report: dict[str, Any] = {
        "requests": merged.requests,
        "rows": rows,
        "duration_s": round(duration, 6),
        "throughput_rps": merged.requests / duration,
        "rows_per_s": rows / duration,
        "latency_ms": latency_summary_ms(merged.ok_latencies_s),
        "codes": dict(sorted(merged.codes.items(), key=lambda kv: (kv[0] != "OK", kv[0]))),
    }
    if extra:
        report.update(extra)
    return report


def send_lag_summary_ms(send_lag_s: np.ndarray) -> dict[str, float | None]:
    """How far behind schedule the open-loop sender ran (p50, p99, max in ms)."""
    if len(send_lag_s) == 0:
        return {"p50": None, "p99": None, "max": None}
    ordered = np.sort(send_lag_s) * 1000.0
    return {
        "p50": nearest_rank(ordered, 50),
        "p99": nearest_rank(ordered, 99),
        "max": float(ordered[-1]),
    }


def format_table(report: Mapping[str, Any]) -> str:
    """A readable, ghz-like rendering of a report from ``summarize``."""
    lines: list[str] = []
    header = report.get("header")
    if header:
        lines.append(str(header))
        lines.append("")
    lines.append("Summary:")
    lines.append(f"  Requests:     {report['requests']}")
    lines.append(f"  Rows:         {report['rows']}")
    lines.append(f"  Duration:     {report['duration_s']:.3f} s")
    lines.append(f"  Throughput:   {report['throughput_rps']:.1f} req/s")
    lines.append(f"  Rows/s (OK):  {report['rows_per_s']:.1f}")
    if report.get("unsent"):
        lines.append(f"  Unsent:       {report['unsent']} (dropped: --max-inflight calls were outstanding)")
    lines.append("")
    lines.append("Latency of OK calls (ms):")
    latency = report["latency_ms"]
    for key in ("min", "p50", "p90", "p95", "p99", "max", "mean"):
        value = latency.get(key)
        lines.append(f"  {key:<5} {'-' if value is None else f'{value:10.3f}'}")
    lag = report.get("send_lag_ms")
    if lag and lag.get("p50") is not None:
        lines.append("")
        lines.append(f"Send lag behind schedule (ms): p50 {lag['p50']:.3f}  p99 {lag['p99']:.3f}  max {lag['max']:.3f}")
    users = report.get("users")
    if users:
        split = " ".join(f"{v or '?'}={n}" for v, n in users["calls_by_version"].items()) or "-"
        lines.append("")
        lines.append(f"Simulated users: {users['count']}, {users['on_one_version']} answered by one version "
                     f"throughout; OK calls by version: {split}")
    lines.append("")
    lines.append("Status codes:")
    codes = report["codes"]
    if not codes:
        lines.append("  (no calls completed)")
    for code, count in codes.items():
        lines.append(f"  {code:<20} {count}")
    return "\n".join(lines)
