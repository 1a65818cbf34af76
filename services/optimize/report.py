"""The run's report: a rich table on stdout, report.md and report.png, and a JSON form.

report.md is also what ``--register`` stores with the new version (``shunter models show``
prints it), so it stands on its own: source, eval set, task, budget, rule, every
candidate's figures and verdict, and which one won.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.optimize.runner import Outcome, Result

#: The most report text the registry stores with a version (the registry caps it too).
MAX_STORED_BYTES = 32 * 1024


def _fmt_size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def rows(outcome: Outcome) -> list[dict[str, Any]]:
    base = outcome.results[0].measurement
    assert base is not None
    table = []
    for r in outcome.results:
        m, q = r.measurement, r.quality
        table.append({
            "candidate": r.name,
            "status": "winner" if r.name == outcome.winner else r.status,
            "backend": r.backend or "-",
            "size": _fmt_size(m.size_bytes) if m else "-",
            "size_x": f"{base.size_bytes / m.size_bytes:.2f}x" if m else "-",
            "latency_b1_ms": f"{m.latency_b1_ms:.3f}" if m else "-",
            "rows_per_s": f"{m.best_rows_per_s:,.0f} @{m.best_batch}" if m else "-",
            "speed_x": f"{m.best_rows_per_s / base.best_rows_per_s:.2f}x" if m else "-",
            "accuracy": f"{q.accuracy:.4f}" if q and q.accuracy is not None else "-",
            "agreement": f"{q.agreement:.4f}" if q else "-",
            "max_abs_diff": f"{q.max_abs_diff:.2e}" if q else "-",
            "why": r.reason or "; ".join(r.notes),
        })
    return table


HEADERS = ("candidate", "status", "backend", "size", "size_x", "latency_b1_ms", "rows_per_s", "speed_x",
           "accuracy", "agreement", "max_abs_diff", "why")
TITLES = ("candidate", "verdict", "backend", "size", "smaller", "b1 ms", "rows/s @batch", "faster",
          "accuracy", "agreement", "max |diff|", "why")


def print_table(outcome: Outcome, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"shunter optimize {outcome.original.model} v{outcome.original.version}")
    for title in TITLES:
        table.add_column(title, overflow="fold")
    styles = {"winner": "bold green", "accepted": "green", "rejected": "red", "failed": "red", "skipped": "yellow"}
    for row in rows(outcome):
        table.add_row(*(row[h] for h in HEADERS), style=styles.get(row["status"], ""))
    console.print(table)
    console.print(summary_line(outcome))


def summary_line(outcome: Outcome, with_rule: bool = True) -> str:
    rule = f" (rule: {outcome.rule})" if with_rule else ""
    if outcome.winner is None:
        return f"no candidate is worth registering{rule}"
    where = f"; registered as version {outcome.registered_version} (staged)" if outcome.registered_version else ""
    return f"winner: {outcome.winner}{rule}{where}"


def markdown(outcome: Outcome) -> str:
    o = outcome.original
    quality_name = outcome.results[0].quality.quality_name if outcome.results[0].quality else "-"
    lines = [
        f"# shunter optimize: {o.model} version {o.version}",
        "",
        f"- source: {o.origin} ({o.config.backend})",
        f"- eval set: {outcome.evalset.source}, {outcome.evalset.rows} rows, "
        f"labels {'given' if outcome.evalset.labels is not None else 'none'}",
        f"- task: {outcome.task}; judged by {quality_name}; budget --max-accuracy-drop {outcome.max_drop}",
        f"- threads: intra-op {o.config.intra_op_threads}, inter-op {o.config.inter_op_threads} "
        "(every candidate runs with the original's)",
        f"- rule: {outcome.rule}",
        f"- {summary_line(outcome, with_rule=False)}",
        "",
        "| " + " | ".join(TITLES) + " |",
        "|" + "---|" * len(TITLES),
    ]
    for row in rows(outcome):
        lines.append("| " + " | ".join(str(row[h]).replace("|", "/") for h in HEADERS) + " |")
    details = [r for r in outcome.results if r.properties or r.notes]
    if details:
        lines += ["", "## What each technique changed", ""]
        for r in details:
            props = ", ".join(f"{k}={_prop(v)}" for k, v in r.properties.items())
            lines.append(f"- **{r.name}**: {'; '.join(r.notes)}{' — ' + props if props else ''}")
    return "\n".join(lines) + "\n"


def _prop(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def as_json(outcome: Outcome) -> dict[str, Any]:
    def result(r: Result) -> dict[str, Any]:
        m, q = r.measurement, r.quality
        return {
            "name": r.name, "status": r.status, "reason": r.reason, "backend": r.backend,
            "directory": str(r.directory) if r.directory else None,
            "size_bytes": m.size_bytes if m else None,
            "latency_b1_ms": m.latency_b1_ms if m else None,
            "best_batch": m.best_batch if m else None,
            "best_rows_per_s": m.best_rows_per_s if m else None,
            "rows_per_s": {str(k): v for k, v in m.rows_per_s.items()} if m else None,
            "quality": q.quality if q else None, "quality_name": q.quality_name if q else None,
            "accuracy": q.accuracy if q else None, "agreement": q.agreement if q else None,
            "max_abs_diff": q.max_abs_diff if q else None, "max_rel_diff": q.max_rel_diff if q else None,
            "drop": r.drop, "properties": r.properties, "notes": r.notes,
        }

    return {
        "model": outcome.original.model, "version": outcome.original.version,
        "source": outcome.original.origin, "task": outcome.task, "max_accuracy_drop": outcome.max_drop,
        "eval_rows": outcome.evalset.rows, "rule": outcome.rule, "winner": outcome.winner,
        "registered_version": outcome.registered_version,
        "candidates": [result(r) for r in outcome.results],
    }


def write(outcome: Outcome, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    md = directory / "report.md"
    md.write_text(markdown(outcome))
    (directory / "report.json").write_text(json.dumps(as_json(outcome), indent=2, default=str))
    png = directory / "report.png"
    plot(outcome, png)
    return [md, directory / "report.json", png]


def plot(outcome: Outcome, path: Path) -> None:
    """Speed vs quality (left) and artifact size (right), one mark per measured candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in outcome.results if r.measurement is not None and r.quality is not None]
    colours = {"original": "tab:blue", "accepted": "tab:green", "rejected": "tab:red", "failed": "tab:gray"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for r in measured:
        assert r.measurement is not None and r.quality is not None
        colour = "gold" if r.name == outcome.winner else colours.get(r.status, "tab:gray")
        left.scatter(r.measurement.best_rows_per_s, r.quality.quality, color=colour, s=60, edgecolor="black")
        left.annotate(r.name, (r.measurement.best_rows_per_s, r.quality.quality), fontsize=7,
                      xytext=(4, 4), textcoords="offset points")
    base = outcome.results[0]
    if base.quality is not None:
        left.axhline(base.quality.quality - outcome.max_drop, color="tab:red", linestyle="--", linewidth=1,
                     label=f"budget (-{outcome.max_drop})")
        left.legend(loc="lower right", fontsize=8)
        left.set_ylabel(base.quality.quality_name)
    left.set_xlabel("rows/s at best batch (in-process)")
    left.set_title("speed vs quality")
    names = [r.name for r in measured]
    sizes = [r.measurement.size_bytes / 1024 for r in measured if r.measurement is not None]
    bar_colours = ["gold" if r.name == outcome.winner else colours.get(r.status, "tab:gray") for r in measured]
    right.barh(names, sizes, color=bar_colours, edgecolor="black")
    right.set_xlabel("artifact size (KiB)")
    right.set_title("size on disk")
    right.invert_yaxis()
    right.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{outcome.original.model} v{outcome.original.version}: {outcome.task}, {outcome.evalset.rows} rows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stored_text(outcome: Outcome) -> str:
    """report.md trimmed to what the registry keeps."""
    text = markdown(outcome)
    data = text.encode()
    if len(data) <= MAX_STORED_BYTES:
        return text
    return data[: MAX_STORED_BYTES - 40].decode(errors="ignore") + "\n\n(report truncated)\n"
