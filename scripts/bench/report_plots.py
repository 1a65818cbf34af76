"""PNG plots of the report: throughput against concurrency, and latency percentiles.

Every marker is the median of the runs; the error bars span min to max.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from report_measure import stat

MODELS = ("digits", "minilm")
PERCENTILES = ("p50", "p90", "p99")


def _plt() -> Any:
    import matplotlib  # only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(s: dict[str, float] | None) -> tuple[float, list[float]]:
    if s is None:
        return float("nan"), [0.0, 0.0]
    return s["median"], [s["median"] - s["min"], s["max"] - s["median"]]


def _series(records: list[dict[str, Any] | None], metric: str) -> tuple[list[float], list[list[float]]]:
    values, lows, highs = [], [], []
    for record in records:
        value, (low, high) = _err(stat(record, metric))
        values.append(value)
        lows.append(low)
        highs.append(high)
    return values, [lows, highs]


def engine_stats(entry: dict[str, Any]) -> dict[int, dict[str, float]]:
    """Per batch size: median/min/max rows/s over an engine's runs (keys may be str after JSON)."""
    from report_measure import summary

    sizes = sorted({int(b) for run in entry.get("runs", []) for b in run})
    out = {}
    for size in sizes:
        s = summary([run.get(size, run.get(str(size))) for run in entry["runs"]])
        if s:
            out[size] = s
    return out


def plot_engine(results: dict[str, Any], path: Path) -> Path | None:
    entries = results.get("engine") or {}
    if not any(e.get("runs") for e in entries.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(MODELS), figsize=(11, 4), squeeze=False)
    for ax, model in zip(axes[0], MODELS, strict=True):
        for name, entry in entries.items():
            if entry.get("model") != model or not entry.get("runs"):
                continue
            stats = engine_stats(entry)
            sizes = list(stats)
            ax.errorbar(
                sizes,
                [stats[b]["median"] for b in sizes],
                yerr=[
                    [stats[b]["median"] - stats[b]["min"] for b in sizes],
                    [stats[b]["max"] - stats[b]["median"] for b in sizes],
                ],
                marker="o",
                capsize=3,
                label=f"{name} ({entry.get('backend', '?')})",
            )
        ax.set_yscale("log")
        _log2_axis(ax, sorted({b for e in entries.values() for b in engine_stats(e)}))
        ax.set_xlabel("batch size (rows)")
        ax.set_ylabel("rows/s")
        ax.set_title(f"{model}: engine in-process, one thread")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    return _save(fig, plt, path)


def plot_worker(results: dict[str, Any], concurrencies: list[int], path: Path) -> Path | None:
    points = results.get("points") or {}
    if not any(k.startswith("worker/") for k in points):
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(MODELS), 2, figsize=(12, 4.2 * len(MODELS)), squeeze=False)
    for row, model in zip(axes, MODELS, strict=True):
        left, right = row
        for mode, marker in (("off", "s"), ("on", "o")):
            records = [points.get(f"worker/{mode}/{model}/c{c}") for c in concurrencies]
            values, err = _series(records, "rows_per_s")
            left.errorbar(concurrencies, values, yerr=err, marker=marker, capsize=3, label=f"batching {mode}")
        engine = (results.get("engine") or {}).get(f"{model}/v{results['settings']['served_versions'][model]}")
        stats = engine_stats(engine) if engine else {}
        if 1 in stats:
            best = max(stats, key=lambda b: stats[b]["median"])
            left.axhline(stats[1]["median"], linestyle=":", color="gray", label="engine in-process, batch 1")
            left.axhline(stats[best]["median"], linestyle="--", color="gray", label=f"engine in-process, batch {best}")
        left.set_yscale("log")
        _log2_axis(left, concurrencies)
        left.set_xlabel("concurrency (1-row requests, closed loop)")
        left.set_ylabel("rows/s")
        left.set_title(f"{model}: worker throughput")
        left.legend(fontsize=8)
        left.grid(True, which="both", alpha=0.3)
        labels, groups = [], []
        for mode in ("off", "on"):
            for c in concurrencies:
                labels.append(f"{mode}\nc{c}")
                groups.append(points.get(f"worker/{mode}/{model}/c{c}"))
        for pct in (50, 90):
            if points.get(f"worker/on/{model}/open{pct}"):
                labels.append(f"open\n{pct}%")
                groups.append(points.get(f"worker/on/{model}/open{pct}"))
        _percentile_bars(right, labels, groups)
        right.set_title(f"{model}: worker latency (batching off/on; open loop = Poisson)")
    return _save(fig, plt, path)


def _percentile_bars(ax: Any, labels: list[str], records: list[dict[str, Any] | None]) -> None:
    width = 0.8 / len(PERCENTILES)
    xs = list(range(len(labels)))
    for i, pct in enumerate(PERCENTILES):
        values, err = _series(records, pct)
        ax.bar([x + (i - 1) * width for x in xs], values, width, yerr=err, capsize=2, label=pct)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_yscale("log")
    _plain_y(ax)
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)


def plot_router(results: dict[str, Any], path: Path) -> Path | None:
    points = results.get("points") or {}
    if not any(k.startswith("router/") for k in points):
        return None
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    keys = [
        ("direct\nc1", "router/direct/digits/c1"),
        ("router\nc1", "router/router1/digits/c1"),
        ("cache hit\nc1", "router/cache/digits/c1"),
        ("direct\nc64", "router/direct/digits/c64"),
        ("router\nc64", "router/router1/digits/c64"),
    ]
    _percentile_bars(left, [k for k, _ in keys], [points.get(key) for _, key in keys])
    left.set_title("digits: worker direct vs through the router")
    width = 0.38
    for i, (workers, key) in enumerate(((1, "router1"), (2, "router2"))):
        values, err = _series([points.get(f"router/{key}/{m}/c64") for m in MODELS], "rows_per_s")
        right.bar(
            [x + (i - 0.5) * width for x in range(len(MODELS))],
            values,
            width,
            yerr=err,
            capsize=3,
            label=f"{workers} worker{'s' if workers > 1 else ''}",
        )
    right.set_xticks(range(len(MODELS)))
    right.set_xticklabels([f"{m}, c64" for m in MODELS])
    right.set_yscale("log")
    _plain_y(right)
    right.set_ylabel("rows/s through the router")
    right.set_title("scaling: workers behind one router")
    right.legend(fontsize=8)
    right.grid(True, axis="y", which="both", alpha=0.3)
    return _save(fig, plt, path)


def plot_peers(results: dict[str, Any], concurrencies: list[int], path: Path) -> Path | None:
    points = results.get("points") or {}
    systems = results.get("peer_systems") or {}
    present = [key for key in systems if any(k.startswith(f"peers/{key}/") for k in points)]
    if not present:
        return None
    labels = {key: systems[key]["label"] for key in present}
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    for key in present:
        values, err = _series([points.get(f"peers/{key}/digits/c{c}") for c in concurrencies], "throughput_rps")
        ax.errorbar(concurrencies, values, yerr=err, marker="o", capsize=3, label=labels[key])
    ax.set_yscale("log")
    _log2_axis(ax, concurrencies)
    ax.set_xlabel("concurrency (1-row requests, closed loop)")
    ax.set_ylabel("requests/s")
    ax.set_title("digits: throughput vs concurrency")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    short = [_short(labels[k]) for k in present]
    top = max(concurrencies)
    _percentile_bars(axes[0][1], short, [points.get(f"peers/{k}/digits/c{top}") for k in present])
    axes[0][1].set_title(f"digits: latency at concurrency {top}")
    _percentile_bars(axes[1][0], short, [points.get(f"peers/{k}/digits/c1") for k in present])
    axes[1][0].set_title("digits: latency at concurrency 1")
    ax = axes[1][1]
    values, err = _series([points.get(f"peers/{k}/minilm/c64") for k in present], "rows_per_s")
    ax.bar(range(len(present)), values, yerr=err, capsize=3, color="tab:green")
    ax.set_xticks(range(len(present)))
    ax.set_xticklabels(short, fontsize=8)
    ax.set_ylabel("rows/s")
    ax.set_title("minilm: throughput at concurrency 64")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, plt, path)


def _short(label: str) -> str:
    """A two-line tick label: "MLServer, parallel_workers 1" -> "MLServer\nworkers 1"."""
    label = label.replace("parallel_workers", "workers").replace(" → ", "→").replace(" instances", " inst.")
    label = label.replace(" instance", " inst.")
    head, _, tail = label.replace(", ", " ", 1).partition(" ")
    return f"{head}\n{tail}"


def _log2_axis(ax: Any, ticks: list[int]) -> None:
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    _plain_y(ax)


def _plain_y(ax: Any) -> None:
    """Log-scale y ticks as plain numbers (1000, not 10^3)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_all(results: dict[str, Any], directory: Path) -> dict[str, Path]:
    concurrencies = sorted(
        {
            r["concurrency"]
            for k, r in (results.get("points") or {}).items()
            if k.startswith("worker/on/digits/c") and r.get("concurrency")
        }
    ) or [1, 64]
    peer_conc = sorted(
        {
            r["concurrency"]
            for k, r in (results.get("points") or {}).items()
            if k.startswith("peers/") and r["model"] == "digits" and r.get("concurrency")
        }
    ) or [1, 64]
    made = {
        "engine": plot_engine(results, directory / "engine.png"),
        "worker": plot_worker(results, concurrencies, directory / "worker.png"),
        "router": plot_router(results, directory / "router.png"),
        "peers": plot_peers(results, peer_conc, directory / "peers.png"),
    }
    return {name: path for name, path in made.items() if path is not None}
