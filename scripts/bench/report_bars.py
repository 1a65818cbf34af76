"""The issue's bars, checked against the report's medians, and the headline figures.

Issue 5 sets the bars (with issue 2's and issue 4's targets for the worker and the router
hop). Each bar here says what it compares, the measured ratio or value, and met /
missed / not measured. Headline figures are the few numbers a History entry quotes.
"""

from __future__ import annotations

from typing import Any

from report_measure import kept_up, median
from report_plots import engine_stats

TRITON = ("triton-1", "triton-2")
MLSERVER = ("mlserver-0", "mlserver-1")


def batching_capture(engine: dict[int, float], served: float, served_base: float) -> tuple[float, int, float, float]:
    """How much of the engine's own batch gain the server turns into throughput.

    ``engine`` is rows/s by batch size (batch 1 included), ``served`` the rows/s at high
    concurrency and ``served_base`` at concurrency 1. Returns (captured, best batch size,
    served gain, engine gain), captured = served gain / engine gain.
    """
    best = max(engine, key=engine.get)
    engine_gain, served_gain = engine[best] / engine[1], served / served_base
    return served_gain / engine_gain, best, served_gain, engine_gain


def _status(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**missed**")


def _open_loop_bar(model: str, record: dict[str, Any] | None) -> dict[str, str]:
    """p99 ≤ 3× p50 at 90 % of capacity; not measured when the point was in fact overloaded."""
    bar = {"bar": f"{model}, open loop (Poisson) at 90% of capacity, worker", "target": "p99 ≤ 3× p50"}
    p50, p99 = median(record, "p50"), median(record, "p99")
    if not p50 or p99 is None:
        return {**bar, "measured": "–", "status": _status(None)}
    ratio = f"p99/p50 = {p99 / p50:.1f} ({p99:.2f} / {p50:.2f} ms)"
    # Overloaded: the queue grew all run, so both percentiles measure the run's length.
    offered, completed = (record or {}).get("rate"), median(record, "rows_per_s")
    duration = median(record, "duration_s") or 0.0
    if offered and completed is not None and duration and not kept_up(offered, completed, duration):
        return {
            **bar,
            "measured": f"overloaded: {completed:,.0f} of {offered:,.0f} req/s offered completed, so the queue "
            f"grew all run; {ratio}",
            "status": _status(None),
        }
    return {**bar, "measured": ratio, "status": _status(p99 <= 3 * p50)}


def _peer_best(
    results: dict[str, Any], keys: tuple[str, ...], model: str, c: int, metric: str
) -> tuple[float, float | None, str] | None:
    """(best value, its p99, system label) among the given peer configurations."""
    points, systems = results["points"], results.get("peer_systems") or {}
    best = None
    for key in keys:
        record = points.get(f"peers/{key}/{model}/c{c}")
        value = median(record, metric)
        if value is not None and (best is None or value > best[0]):
            best = (value, median(record, "p99"), systems.get(key, {}).get("label", key))
    return best


def _shunter(results: dict[str, Any], system: str, model: str, c: int, metric: str) -> float | None:
    """A Shunter figure from the peers section (same rounds as the peers), else from sections 2/3."""
    points = results["points"]
    value = median(points.get(f"peers/shunter-{system}/{model}/c{c}"), metric)
    if value is None:
        fallback = f"worker/on/{model}/c{c}" if system == "worker" else f"router/router1/{model}/c{c}"
        value = median(points.get(fallback), metric)
    return value


def _engine_median(results: dict[str, Any], model: str) -> dict[int, float]:
    version = results["settings"]["served_versions"][model]
    entry = (results.get("engine") or {}).get(f"{model}/v{version}")
    return {b: s["median"] for b, s in engine_stats(entry).items()} if entry else {}


def _vs_peer(
    results: dict[str, Any], system: str, peers: tuple[str, ...], peer_name: str, factor: float, check_p99: bool
) -> dict[str, str]:
    ours = _shunter(results, system, "digits", 64, "throughput_rps")
    ours_p99 = _shunter(results, system, "digits", 64, "p99")
    best = _peer_best(results, peers, "digits", 64, "throughput_rps")
    who = "worker alone" if system == "worker" else "through the router"
    target = f"≥ {factor:g}× {peer_name}'s best" if factor != 1 else f"ahead of {peer_name}'s best"
    if check_p99:
        target += ", p99 ≤ theirs"
    bar = f"digits, 1-row requests, 64 in flight, {who} vs {peer_name}"
    if ours is None or best is None or not best[0]:
        return {"bar": bar, "target": target, "measured": "–", "status": _status(None)}
    ratio = ours / best[0]
    ok = ratio >= factor if factor != 1 else ratio > 1
    measured = f"{ratio:.2f}× ({ours:,.0f} vs {best[0]:,.0f} req/s, {best[2]})"
    if check_p99 and ours_p99 is not None and best[1] is not None:
        measured += f"; p99 {ours_p99:.1f} vs {best[1]:.1f} ms"
        ok = ok and ours_p99 <= best[1]
    return {"bar": bar, "target": target, "measured": measured, "status": _status(ok)}


def bars(results: dict[str, Any]) -> list[dict[str, str]]:
    points = results["points"]
    out = [
        _vs_peer(results, "worker", TRITON, "Triton", 1.5, True),
        _vs_peer(results, "worker", MLSERVER, "MLServer", 2.0, True),
        _vs_peer(results, "router", TRITON, "Triton", 1.0, False),
    ]
    for system, limit in (("worker", 1.0), ("router", 1.5)):
        p50 = _shunter(results, system, "digits", 1, "p50")
        measured = "–" if p50 is None else f"{p50:.2f} ms (batching on, as configured)"
        unbatched = median(points.get("worker/off/digits/c1"), "p50")
        if system == "worker" and p50 is not None and unbatched is not None:
            measured += f"; batching off: {unbatched:.2f} ms"
        out.append(
            {
                "bar": f"digits, 1 in flight, p50 {'to the worker' if system == 'worker' else 'through the router'}",
                "target": f"≤ {limit:g} ms",
                "measured": measured,
                "status": _status(None if p50 is None else p50 <= limit),
            }
        )
    # Compute-bound: served rows/s against the engine at the same batch size.
    overhead = points.get("worker/off/minilm/overhead")
    engine = _engine_median(results, "minilm")
    served = median(overhead, "rows_per_s")
    batch = overhead["batch_rows"] if overhead else None
    ratio = served / engine[batch] if served and batch in engine else None
    out.append(
        {
            "bar": f"minilm, served rows/s vs in-process at the same batch ({batch or '?'} rows/request)",
            "target": "≥ 0.85",
            "measured": "–" if ratio is None else f"{ratio:.2f} ({served:,.0f} vs {engine[batch]:,.0f} rows/s)",
            "status": _status(None if ratio is None else ratio >= 0.85),
        }
    )
    for model in ("minilm", "digits"):
        on64 = median(points.get(f"worker/on/{model}/c64"), "rows_per_s")
        off1 = median(points.get(f"worker/off/{model}/c1"), "rows_per_s")
        engine = _engine_median(results, model)
        captured = None
        if on64 and off1 and engine and 1 in engine:
            captured, best, served_gain, engine_gain = batching_capture(engine, on64, off1)
            measured = (
                f"{captured:.2f} (served on c64 / off c1 = {served_gain:.2f}×; engine batch {best} / "
                f"batch 1 = {engine_gain:.2f}×)"
            )
        else:
            measured = "–"
        out.append(
            {
                "bar": f"{model}, dynamic batching captures the engine's batch-1 → best-batch gain at 64 in flight",
                "target": "≥ 0.9" if model == "minilm" else "(no bar: what overhead allows)",
                "measured": measured,
                "status": _status(None if captured is None else captured >= 0.9) if model == "minilm" else "info",
            }
        )
    ours = _shunter(results, "worker", "minilm", 64, "rows_per_s")
    for peers, name in ((TRITON, "Triton"), (MLSERVER, "MLServer")):
        best = _peer_best(results, peers, "minilm", 64, "rows_per_s")
        ok = None if ours is None or best is None else ours > best[0]
        out.append(
            {
                "bar": f"minilm, 64 in flight, worker vs {name}",
                "target": f"ahead of {name}'s best",
                "measured": "–"
                if ok is None
                else f"{ours / best[0]:.2f}× ({ours:,.0f} vs {best[0]:,.0f} rows/s, {best[2]})",
                "status": _status(ok),
            }
        )
    for model in ("digits", "minilm"):
        out.append(_open_loop_bar(model, points.get(f"worker/on/{model}/open90")))
    cluster = median(points.get("router/router1/digits/c64"), "", "cluster")
    worker = median(points.get("worker/on/digits/c64"), "", "worker")
    out.append(
        {
            "bar": "digits, CPU per request, all Shunter processes (router, worker, registry, Redis), 64 in flight",
            "target": "≤ 0.3 ms",
            "measured": "–"
            if cluster is None
            else f"{cluster:.3f} ms" + (f" (worker alone: {worker:.3f} ms)" if worker is not None else ""),
            "status": _status(None if cluster is None else cluster <= 0.3),
        }
    )
    for metric, limit in (("p50", 0.3), ("p99", 1.0)):
        direct = median(points.get("router/direct/digits/c1"), metric)
        routed = median(points.get("router/router1/digits/c1"), metric)
        added = None if direct is None or routed is None else routed - direct
        out.append(
            {
                "bar": f"router hop, added {metric}, 1 in flight (issue 4)",
                "target": f"≤ {limit:g} ms",
                "measured": "–" if added is None else f"{added:+.2f} ms",
                "status": _status(None if added is None else added <= limit),
            }
        )
    cache = median(points.get("router/cache/digits/c1"), "p50")
    out.append(
        {
            "bar": "router cache hit p50, 1 in flight (issue 4)",
            "target": "≤ 0.5 ms",
            "measured": "–" if cache is None else f"{cache:.2f} ms",
            "status": _status(None if cache is None else cache <= 0.5),
        }
    )
    return out


def headline(results: dict[str, Any]) -> dict[str, float | None]:
    """The figures a History entry quotes, by name (compared run to run)."""
    points = results["points"]
    triton = _peer_best(results, TRITON, "digits", 64, "throughput_rps")
    mlserver = _peer_best(results, MLSERVER, "digits", 64, "throughput_rps")
    triton_minilm = _peer_best(results, TRITON, "minilm", 64, "rows_per_s")
    return {
        "worker digits c64 req/s": _shunter(results, "worker", "digits", 64, "throughput_rps"),
        "worker digits c64 p99 ms": _shunter(results, "worker", "digits", 64, "p99"),
        "worker digits c1 p50 ms": _shunter(results, "worker", "digits", 1, "p50"),
        "router digits c64 req/s": _shunter(results, "router", "digits", 64, "throughput_rps"),
        "router digits c1 p50 ms": _shunter(results, "router", "digits", 1, "p50"),
        "router hop added p50 ms (c1)": _diff(points, "p50"),
        "cluster CPU ms/req (digits c64)": median(points.get("router/router1/digits/c64"), "", "cluster"),
        "worker minilm c64 rows/s": _shunter(results, "worker", "minilm", 64, "rows_per_s"),
        "Triton best digits c64 req/s": triton[0] if triton else None,
        "MLServer best digits c64 req/s": mlserver[0] if mlserver else None,
        "Triton best minilm c64 rows/s": triton_minilm[0] if triton_minilm else None,
    }


def _diff(points: dict[str, Any], metric: str) -> float | None:
    direct = median(points.get("router/direct/digits/c1"), metric)
    routed = median(points.get("router/router1/digits/c1"), metric)
    return None if direct is None or routed is None else routed - direct
