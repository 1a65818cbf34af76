"""BENCHMARKS.md (or gpu.md), the PNGs and the results JSON from one run's results and the matrix's bars.

Everything above "## History" is regenerated; the History section (appended by hand) is
carried over. Cells read ``median [min–max]`` over the runs. A bar is judged from the
medians: met, **missed**, not measured (a figure is missing: the section failed or did not
run), or info (no target). "Changes since the previous report" compares the headline
figures with the results JSON the previous run left beside the plots.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

HISTORY = "## History"
#: Headline figures (name: point key, metric or cpu:GROUP), the few a History entry quotes.
HEADLINE = {
    "worker digits c64 req/s": (["peers/shunter-worker/digits/c64", "worker/on/digits/c64"], "throughput_rps"),
    "worker digits c64 p99 ms": (["peers/shunter-worker/digits/c64", "worker/on/digits/c64"], "p99"),
    "worker digits c1 p50 ms": (["peers/shunter-worker/digits/c1", "worker/on/digits/c1"], "p50"),
    "router digits c64 req/s": (["peers/shunter-router/digits/c64", "router/router1/digits/c64"], "throughput_rps"),
    "router digits c1 p50 ms": (["peers/shunter-router/digits/c1", "router/router1/digits/c1"], "p50"),
    "router hop added p50 ms (c1)": (["router/router1/digits/c1", "router/direct/digits/c1"], "diff:p50"),
    "cluster CPU ms/req (digits c64)": (["router/router1/digits/c64"], "cpu:cluster"),
    "worker minilm c64 rows/s": (["peers/shunter-worker/minilm/c64", "worker/on/minilm/c64"], "rows_per_s"),
    "Triton best digits c64 req/s": (["peers/triton-1/digits/c64", "peers/triton-2/digits/c64"], "best:throughput_rps"),
    "MLServer best digits c64 req/s": (
        ["peers/mlserver-0/digits/c64", "peers/mlserver-1/digits/c64"],
        "best:throughput_rps",
    ),
    "Triton best minilm c64 rows/s": (["peers/triton-1/minilm/c64", "peers/triton-2/minilm/c64"], "best:rows_per_s"),
}

# ---------------------------------------------------------------- figures


def summary(values: list[Any]) -> dict[str, float] | None:
    clean = [v for v in values if v is not None]
    if not clean:
        return None
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean), "n": len(clean)}


def stat(record: dict[str, Any] | None, metric: str) -> dict[str, float] | None:
    """Median/min/max of a metric ("cpu:GROUP" for CPU ms per request) over a point's good runs."""
    runs = [r for r in (record or {}).get("runs", []) if r.get("rows_per_s") is not None and "error" not in r]
    if metric.startswith("cpu:"):
        return summary([(r.get("cpu_ms_per_request") or {}).get(metric[4:]) for r in runs])
    return summary([r.get(metric) for r in runs])


def cpu_ratio(record: dict[str, Any] | None, cpu: str, per: str) -> dict[str, float] | None:
    """Over a point's good runs: one CPU group's time per request over another's, run by run."""
    runs = [r.get("cpu_ms_per_request") or {} for r in (record or {}).get("runs", []) if "error" not in r]
    return summary([r[cpu] / r[per] for r in runs if r.get(cpu) and r.get(per)])


def median(record: dict[str, Any] | None, metric: str) -> float | None:
    s = stat(record, metric)
    return None if s is None else s["median"]


def kept_up(offered: float, completed: float, duration_s: float) -> bool:
    """Whether an open-loop run completed what it was offered within Poisson noise: arrivals
    vary by about sqrt(n), so completing more than three of those less means a queue that grew."""
    expected = offered * duration_s
    return expected <= 0 or completed * duration_s >= expected - 3 * math.sqrt(expected)


def formed_batch(record: dict[str, Any] | None) -> int | None:
    """The mean batch the worker executed over a point: with batching on, ModelStatistics
    inference_count / execution_count over it; with batching off, each request runs alone (the
    worker counts it as one inference, as Triton does), so the rows per request."""
    if not record:
        return None
    if record.get("tags", {}).get("mode") == "off":
        return record["batch_rows"]
    runs = [r for r in record["runs"] if r.get("executions")]
    return max(1, round(sum(r["inferences"] for r in runs) / sum(r["executions"] for r in runs))) if runs else None


def engine_stats(entry: dict[str, Any] | None) -> dict[int, dict[str, float]]:
    """Per batch size: median/min/max rows/s over an engine's runs (keys are str after JSON)."""
    runs = (entry or {}).get("runs") or []
    sizes = sorted({int(b) for run in runs for b in run})
    out = {b: summary([run.get(b, run.get(str(b))) for run in runs]) for b in sizes}
    return {b: s for b, s in out.items() if s}


def limit_at(results: dict[str, Any], record: dict[str, Any], batch: int) -> dict[str, float] | None:
    """In-process rows/s at ``batch`` with the point's engine threads (one thread: the engine section's too)."""
    version = results["settings"]["served_versions"].get(record["model"])
    threads = record.get("engine_threads", 1)
    found = engine_stats(results.get("limit", {}).get(f"{record['model']}/v{version}/t{threads}")).get(batch)
    if found is None and threads == 1:
        found = engine_stats(results["engine"].get(f"{record['model']}/v{version}")).get(batch)
    return found


def first(results: dict[str, Any], keys: list[str]) -> tuple[str, dict[str, Any]] | None:
    for key in keys:
        if stat(results["points"].get(key), "rows_per_s"):
            return key, results["points"][key]
    return None


def headline(results: dict[str, Any]) -> dict[str, float | None]:
    out = {}
    for name, (keys, metric) in HEADLINE.items():
        if metric.startswith("diff:"):
            a, b = (median(results["points"].get(k), metric[5:]) for k in keys)
            out[name] = None if a is None or b is None else a - b
        elif metric.startswith("best:"):
            values = [median(results["points"].get(k), metric[5:]) for k in keys]
            out[name] = max((v for v in values if v is not None), default=None)
        else:
            found = first(results, keys)
            out[name] = median(found[1], metric) if found else None
    return out


# ---------------------------------------------------------------- bars


def judge(bar: dict[str, Any], results: dict[str, Any]) -> dict[str, str]:
    """One bar: what it compares, the measured figure or ratio, and met / missed / not measured / info."""
    points = results["points"]
    measured, ok = "–", None
    kind = bar["kind"]
    if kind == "vs_best":
        ours = first(results, bar["ours"])
        theirs = [(median(points.get(k), bar["metric"]), points.get(k)) for k in bar["theirs"]]
        theirs = [t for t in theirs if t[0]]
        if ours and theirs:
            value, best = median(ours[1], bar["metric"]), max(theirs, key=lambda t: t[0])
            ratio = value / best[0]
            ok = ratio > 1 if bar.get("ahead") else ratio >= bar["min"]
            measured = f"{ratio:.2f}× ({value:,.0f} vs {best[0]:,.0f} {bar['unit']}, {best[1]['system']})"
            if bar.get("p99"):
                mine, other = median(ours[1], "p99"), median(best[1], "p99")
                measured += f"; p99 {mine:.1f} vs {other:.1f} ms"
                ok = ok and mine <= other
    elif kind == "value":
        found = first(results, bar["points"])
        metric = f"cpu:{bar['cpu']}" if "cpu" in bar else bar["metric"]
        value = median(found[1], metric) if found else None
        if value is not None:
            digits, unit = bar.get("digits", 2), bar.get("unit", "")
            measured = f"{value:.{digits}f} {unit}" + (f" ({bar['note']})" if "note" in bar else "")
            also = bar.get("also")
            other = (
                median(points.get(also["point"]), f"cpu:{also['cpu']}" if "cpu" in also else metric) if also else None
            )
            if other is not None:
                measured += f"; {also['label']}: {other:.{digits}f} {unit}"
            ok = value <= bar["max"] if "max" in bar else value >= bar["min"]
    elif kind == "cpu_ratio":
        record = points.get(bar["point"])
        ratio = cpu_ratio(record, bar["cpu"], bar["per"])
        if ratio is not None:
            a, b = median(record, f"cpu:{bar['cpu']}"), median(record, f"cpu:{bar['per']}")
            measured = f"{ratio['median']:.2f}× ({bar['cpu']} {1000 * a:.0f} µs vs {bar['per']} {1000 * b:.0f} µs)"
            ok = ratio["median"] <= bar["max"]
    elif kind == "diff":
        a, b = (median(points.get(k), bar["metric"]) for k in bar["points"])
        if a is not None and b is not None:
            measured, ok = f"{a - b:+.2f} ms", a - b <= bar["max"]
    elif kind == "tail":
        record = points.get(bar["point"])
        p50, p99 = median(record, "p50"), median(record, "p99")
        if p50 and p99 is not None:
            measured = f"p99/p50 = {p99 / p50:.1f} ({p99:.2f} / {p50:.2f} ms)"
            offered, completed = record.get("rate"), median(record, "rows_per_s") or 0.0
            if offered and not kept_up(offered, completed, median(record, "duration_s") or 0.0):
                # The queue grew all run: both percentiles measure the run's length.
                measured = (
                    f"overloaded: {completed:,.0f} of {offered:,.0f} req/s offered completed, so the queue "
                    f"grew all run; {measured}"
                )
            else:
                ok = p99 / p50 <= bar["max"]
    elif kind == "limit":
        record = points.get(bar["point"])
        batch = formed_batch(record)
        served, limit = median(record, "rows_per_s"), limit_at(results, record, batch) if batch else None
        if served and limit:
            ratio = served / limit["median"]
            measured = (
                f"{ratio:.2f} ({served:,.0f} vs {limit['median']:,.0f} rows/s; in-process "
                f"{_threads(record)} at batch {batch}, the batch the worker executed)"
            )
            ok = ratio >= bar["min"] if "min" in bar else None
    elif kind == "capture":
        record, base = points.get(bar["point"]), points.get(bar["base"])
        batch = formed_batch(record)
        on, off = median(record, "rows_per_s"), median(base, "rows_per_s")
        at, one = (limit_at(results, record, b) if batch else None for b in (batch, 1))
        if on and off and at and one:
            served_gain, engine_gain = on / off, at["median"] / one["median"]
            measured = (
                f"{served_gain / engine_gain:.2f} (served on / off at c{record['concurrency']} = "
                f"{served_gain:.2f}×; in-process {_threads(record)}, batch {batch} (formed) / batch 1 = "
                f"{engine_gain:.2f}×)"
            )
            ok = served_gain / engine_gain >= bar["min"] if "min" in bar else None
    elif kind == "ratio_best":
        tops = [
            max(((median(points.get(k), "rows_per_s") or 0, points.get(k)) for k in keys), key=lambda t: t[0])
            for keys in (bar["points"], bar["base"])
        ]
        if tops[0][0] and tops[1][0]:
            (a, ra), (b, rb) = tops
            measured = f"{a / b:.2f}× ({a:,.0f} rows/s at c{ra['concurrency']} vs {b:,.0f} at c{rb['concurrency']})"
    elif kind == "batch":
        batch = formed_batch(points.get(bar["point"]))
        if batch is not None:
            measured, ok = f"{batch} rows", batch >= bar["min"]
    elif kind == "engine_gain":
        model, version = bar["model"].split("/")
        engine = {b: s["median"] for b, s in engine_stats(results["engine"].get(f"{model}/v{version}")).items()}
        if 1 in engine:
            best = max(engine, key=engine.__getitem__)
            measured = (
                f"{engine[best] / engine[1]:.1f}× (batch {best}: {engine[best]:,.0f} vs batch 1: {engine[1]:,.0f})"
            )
    if "info" in bar:
        return {"bar": bar["name"], "target": bar["info"], "measured": measured, "status": "info"}
    target = bar.get("target") or (f"≥ {bar['min']:g}" if "min" in bar else f"≤ {bar['max']:g}")
    if kind == "value" and "target" not in bar:
        target += f" {bar.get('unit', '')}".rstrip()
    elif kind == "diff":
        target += " ms"
    elif kind == "tail":
        target = f"p99 ≤ {bar['max']:g}× p50"
    elif kind == "batch":
        target += " rows"
    status = "not measured" if ok is None else ("met" if ok else "**missed**")
    return {"bar": bar["name"], "target": target, "measured": measured, "status": status}


def _threads(record: dict[str, Any]) -> str:
    n = record.get("engine_threads", 1)
    return f"{n} thread{'s' if n > 1 else ''}"


# ---------------------------------------------------------------- markdown

PROSE_FILE = Path(__file__).resolve().with_name("report.md")


def prose() -> dict[str, str]:
    """report.md's chunks by name: the wording of every section, kept out of the code."""
    parts = PROSE_FILE.read_text().split("<!-- ")[2:]
    return {head.split(" -->")[0]: head.split(" -->\n", 1)[1].strip() for head in parts}


def fmt(s: dict[str, float] | None, digits: int = 0) -> str:
    if s is None:
        return "–"
    text = f"{s['median']:,.{digits}f}"
    return text + (f" [{s['min']:,.{digits}f}–{s['max']:,.{digits}f}]" if s["n"] > 1 else "")


def ms(record: dict[str, Any] | None, metric: str) -> str:
    s = stat(record, metric)
    return fmt(s, 2 if s is None or s["median"] < 10 else 1)


def cells(record: dict[str, Any] | None, *metrics: str) -> list[str]:
    """A record's table cells: "errors", a latency (ms), else METRIC or METRIC/DIGITS as median [min–max]."""
    out = []
    for metric in metrics:
        name, _, digits = metric.partition("/")
        if metric == "errors":
            out.append(errors(record))
        else:
            out.append(ms(record, name) if name in ("p50", "p90", "p99") else fmt(stat(record, name), int(digits or 0)))
    return out


def table(header: str, rows: list[list[str]]) -> str:
    """A markdown table; ``header`` is "a | b | c"."""
    cells = header.split(" | ")
    lines = ["| " + " | ".join(cells) + " |", "|" + "|".join(" --- " for _ in cells) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def errors(record: dict[str, Any] | None) -> str:
    if record is None:
        return "not measured"
    bad: dict[str, int] = {}
    for run in record["runs"]:
        for code, count in (run.get("codes") or {}).items():
            if code != "OK":
                bad[code] = bad.get(code, 0) + count
    failed = next((r["error"] for r in record["runs"] if "error" in r), None)
    if failed and not any(r.get("rows_per_s") for r in record["runs"]):
        return f"failed: {failed.splitlines()[0][:120]}"
    return ", ".join(f"{k} {v}" for k, v in bad.items()) or "none"


def section_machine(results: dict[str, Any]) -> str:
    meta, settings = results["meta"], results["settings"]
    git = meta["git"]
    commit = git["commit"] + (f" (+{git['modified_files']} modified files)" if git.get("modified_files") else "")
    rows = [
        ["run", f"{meta.get('started', '?')}, took {meta.get('took_s', '?')} s (profile {results['profile']})"],
        ["CPU", f"{meta['cpu_model']}, {meta['cpus']} CPUs ({meta['usable_cpus']} usable)"],
        ["memory", f"{meta['memory_gib']} GiB"],
        ["OS", f"{meta['os']}, kernel {meta['kernel']}"],
        ["Shunter", f"commit {commit}; Python {meta['python']}; " + _pairs(meta["packages"])],
    ]
    if gpu := meta.get("gpu"):
        rows.append(["GPU", f"{gpu.get('device_name')}; torch {gpu.get('torch')}, CUDA {gpu.get('cuda')}"])
    for name, peer in results.get("peers", {}).items():
        served = [s["metadata"] for n, s in results["servers"].items() if n.startswith(name) and s.get("metadata")]
        detail = _pairs(peer.get("versions", {})) + (
            f"; server reports {served[0]['name']} {served[0]['version']}" if served else ""
        )
        rows.append([name, detail if peer["status"] == "ok" else "unavailable (see section 5)"])
    load = meta["load_at_start"]
    rows.append(["load average (1 min)", f"{load[0]:.2f} at start, {meta.get('load_at_end', [0])[0]:.2f} at end"])
    served = ", ".join(f"{m} v{v}" for m, v in settings["served_versions"].items())
    rows.append(
        [
            "settings",
            f"{settings['runs']} interleaved run(s) per figure; {settings['duration_s']:g} s measured "
            f"+ {settings['warmup_s']:g} s warm-up per point; {settings['client_processes']} client process(es) "
            f"of `shunter bench`; served versions {served}",
        ]
    )
    text = "## Machine and versions\n\n" + table(" | ", rows)
    if load[0] > 0.5:
        text += (
            f"\n\n**Note:** the 1-minute load average was {load[0]:.2f} when the run started: other work "
            "shared the cores, so these figures understate what a quiet machine does."
        )
    if settings.get("quick"):
        text += "\n\n**Quick run** (`--quick`): one short run per point, a smoke test; not comparable with a full run."
    for section, why in results["errors"].items():
        text += f"\n\n**{section} failed:** `{why[:500]}`"
    if results.get("skipped"):
        text += f"\n\n**Skipped by the time box:** {', '.join(results['skipped'])}."
    return text


def _pairs(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in mapping.items())


def served(bar: dict[str, Any], results: dict[str, Any]) -> bool:
    """Whether the run serves every model the bar's points name (else the bar is left out)."""
    keys = [bar.get(k) for k in ("point", "base", "ours", "theirs", "points")]
    flat = [k for key in keys if key for k in ([key] if isinstance(key, str) else key)]
    return all(k.split("/")[2] in results["settings"]["served_versions"] for k in flat)


def judged(bars: list[dict[str, Any]], results: dict[str, Any]) -> list[list[str]]:
    return [list(judge(bar, results).values()) for bar in bars if served(bar, results)]


def section_bars(results: dict[str, Any], bars: list[dict[str, Any]], title: str, text: dict[str, str]) -> str:
    rows = judged(bars, results)
    return f"{title}\n\n{text['bars']}\n\n" + table("bar | target | measured | status", rows)


def section_engine(results: dict[str, Any], text: dict[str, str]) -> str:
    entries = {k: e for k, e in results["engine"].items() if e.get("runs")}
    out = text["engine"] + "\n\n"
    if not entries:
        failed = [f"`{k}`: {e['errors'][0][-300:]}" for k, e in results["engine"].items() if e.get("errors")]
        return out + "Not measured." + "".join(f"\n\n{f}" for f in failed)
    stats = {k: engine_stats(e) for k, e in entries.items()}
    header = " | ".join(["batch"] + [f"{k} ({e.get('backend', '?')})" for k, e in entries.items()])
    sizes = sorted({b for s in stats.values() for b in s})
    return out + table(header, [[str(b)] + [fmt(stats[k].get(b)) for k in entries] for b in sizes])


def section_limit(results: dict[str, Any], text: dict[str, str]) -> str:
    entries = [e for e in results.get("limit", {}).values() if e.get("runs")]
    rows = [[e["model"], str(e["threads"]), str(b), fmt(s)] for e in entries for b, s in engine_stats(e).items()]
    body = table("model | engine threads | batch | in-process rows/s", rows) if rows else "Not measured in this run."
    return f"{text['limit']}\n\n{body}"


def section_worker(results: dict[str, Any], text: dict[str, str]) -> str:
    points = results["points"]
    keys = [k for k, r in points.items() if k.startswith("worker/") and r.get("concurrency") and "/overhead" not in k]
    if not keys:
        return text["worker"] + "\n\nNot measured."
    rows = [
        [
            r["model"],
            r["tags"]["batching"]
            + (f", {r['tags']['processes']} processes" if r["tags"].get("processes", 1) > 1 else ""),
            r["label"],
            *cells(r, "rows_per_s", "p50", "p90", "p99", "cpu:worker/3"),
            str(formed_batch(r) or "–"),
            *cells(r, "client_cpu/2", "errors"),
        ]
        for r in (points[k] for k in keys)
    ]
    out = (
        text["worker"]
        + "\n\n"
        + table(
            "model | batching | load | rows/s | p50 ms | p90 ms | p99 ms | worker CPU "
            "ms/req | batch | client CPU (cores) | errors",
            rows,
        )
    )
    over = [r for k, r in points.items() if k.startswith("worker/") and k.endswith("/overhead")]
    if over:
        rows = []
        for r in over:
            served, limit = stat(r, "rows_per_s"), limit_at(results, r, r["batch_rows"])
            ratio = f"{served['median'] / limit['median']:.2f}" if served and limit else "–"
            rows.append(
                [r["model"], str(r["batch_rows"]), fmt(served), str(r.get("engine_threads", 1)), fmt(limit), ratio]
            )
        out += f"\n\n{text['overhead']}\n\n" + table(
            "model | rows/request | served rows/s | engine threads | in-process rows/s | served / in-process", rows
        )
    waits = [points[k] for k in keys if stat(points[k], "in_handler")]
    if waits:
        rows = [
            [
                r["model"],
                r["tags"]["batching"],
                r["label"],
                *cells(r, "in_handler/1", "in_queue/1", "executing/1"),
                fmt(summary([r["concurrency"] - x["in_handler"] for x in r["runs"] if "in_handler" in x]), 1),
                *cells(r, "loop_on_cpu/2", "loop_waiting/2"),
            ]
            for r in waits
        ]
        out += f"\n\n{text['waits']}\n\n" + table(
            "model | batching | load | in the worker's handler | of those, queued | of those, executing "
            "| elsewhere (gRPC, transport, client) | loop on a CPU | loop waiting for a CPU",
            rows,
        )
    out += "\n\n" + section_limit(results, text)
    opened = [r for k, r in points.items() if k.startswith("worker/") and "/open" in k]
    if opened:
        capacity = "; ".join(
            f"{m} {d['open_loop']:,.0f} (closed loop {d['closed_loop']:,.0f}; probes offered → completed: "
            + ", ".join(f"{o:,.0f} → {c:,.0f}" for o, c in d["probes"])
            + ")"
            for m, d in results.get("capacity_detail", {}).items()
        )
        rows = [
            [
                r["model"],
                f"{r['tags']['fraction']:.0%}",
                f"{r['rate']:,.0f}",
                *cells(r, "throughput_rps", "p50", "p90", "p99"),
                f"{(median(r, 'p99') or 0) / (median(r, 'p50') or 1):.1f}",
                *cells(r, "send_lag_p99_ms/2"),
            ]
            for r in opened
        ]
        out += f"\n\n{text['open_loop']}\n\nCapacity, req/s: {capacity}.\n\n" + table(
            "model | load | offered req/s | achieved req/s | p50 ms | p90 ms | p99 ms | p99/p50 | client send lag "
            "p99 ms",
            rows,
        )
    return out


def section_router(results: dict[str, Any], text: dict[str, str]) -> str:
    points, rows = results["points"], []
    for c in (1, 64):
        direct, routed = points.get(f"router/direct/digits/c{c}"), points.get(f"router/router1/digits/c{c}")
        if direct or routed:
            row = [f"digits, c{c}"]
            for metric in ("p50", "p99"):
                d, r = median(direct, metric), median(routed, metric)
                row += [ms(direct, metric), ms(routed, metric), f"{r - d:+.2f}" if d and r else "–"]
            rows.append([*row, *cells(direct, "throughput_rps"), *cells(routed, "throughput_rps", "cpu:cluster/3")])
    if not rows:
        return text["router"] + "\n\nNot measured."
    out = (
        text["router"]
        + "\n\n"
        + table(
            "load | direct p50 ms | router p50 ms | added p50 | direct p99 ms | router p99 "
            "ms | added p99 | direct req/s | router req/s | cluster CPU ms/req",
            rows,
        )
    )
    door = [
        ("router", "unary", "c64", "router/router1/digits/c64"),
        ("router", "one stream per connection", "c64", "router/stream/digits/c64"),
        ("bare grpc.aio relay", "unary", "c1", "router/relay/digits/c1"),
        ("bare grpc.aio relay", "unary", "c64", "router/relay/digits/c64"),
        ("bare grpc.aio relay", "one stream per connection", "c64", "router/relay-stream/digits/c64"),
    ]
    rows = [
        [
            hop,
            client,
            load,
            *cells(points[key], "throughput_rps", "p50", "p99", "cpu:router/3", "cpu:worker/3"),
            fmt(cpu_ratio(points[key], "router", "worker"), 2),
        ]
        for hop, client, load, key in door
        if key in points
    ]
    if len(rows) > 1:
        out += f"\n\n{text['front_door']}\n\n" + table(
            "hop | client | load | req/s | p50 ms | p99 ms | hop CPU ms/req | worker CPU ms/req | hop ÷ worker", rows
        )
    cache = points.get("router/cache/digits/c1")
    if cache:
        out += "\n\n" + text["cache"].format(
            p50=ms(cache, "p50"), p99=ms(cache, "p99"), rps=fmt(stat(cache, "throughput_rps"))
        )
    return out + "\n\n" + text["cluster_cpu"]


def section_scaling(results: dict[str, Any], text: dict[str, str]) -> str:
    points, rows = results["points"], []
    for model in results["settings"]["served_versions"]:
        one, two = points.get(f"router/router1/{model}/c64"), points.get(f"router/router2/{model}/c64")
        a, b = stat(one, "rows_per_s"), stat(two, "rows_per_s")
        if a or b:
            ratio = f"{b['median'] / a['median']:.2f}×" if a and b else "–"
            rows.append([model, fmt(a), fmt(b), ratio, ms(one, "p99"), ms(two, "p99")])
    if not rows:
        return text["scaling"] + "\n\nNot measured."
    header = "model | 1 worker rows/s | 2 workers rows/s | 2 / 1 | 1 worker p99 ms | 2 workers p99 ms"
    return (
        text["scaling"]
        + "\n\n"
        + table(header, rows)
        + "\n\n"
        + text["scaling_note"].format(cpus=results["meta"]["usable_cpus"])
    )


def section_peers(results: dict[str, Any], text: dict[str, str]) -> str:
    points, systems, out = results["points"], results.get("systems", {}), text["peers"] + "\n\n"
    for name, peer in results.get("peers", {}).items():
        if peer["status"] != "ok":
            out += f"**{name} could not be used:**\n\n```\n{(peer.get('reason') or '?')[-1500:]}\n```\n\n"
    for system in systems.values():
        if system.get("error"):
            out += f"**{system['label']} did not start:**\n\n```\n{system['error'][-1500:]}\n```\n\n"
    present = [k for k in systems if any(p.startswith(f"peers/{k}/") for p in points)]
    if not present:
        return out + "Not measured."
    conc = sorted({r["concurrency"] for k, r in points.items() if k.startswith("peers/") and r["model"] == "digits"})
    low, top, rows = conc[0], conc[-1], []
    for key in present:
        rec = {c: points.get(f"peers/{key}/digits/c{c}") for c in conc}
        rows.append(
            [
                systems[key]["label"],
                *(fmt(stat(rec[c], "throughput_rps")) for c in conc),
                *cells(rec[low], "p50"),
                *cells(rec[top], "p50", "p99", "cpu:server/3", "client_cpu/2", "errors"),
            ]
        )
    header = " | ".join(
        [
            "system",
            *(f"req/s c{c}" for c in conc),
            f"p50 ms c{low}",
            f"p50 ms c{top}",
            f"p99 ms c{top}",
            f"server CPU ms/req c{top}",
            f"client CPU (cores) c{top}",
            "errors",
        ]
    )
    out += "**digits** (RPC-bound: single-row requests, a tiny MLP)\n\n" + table(header, rows)
    titles = {
        "minilm": "compute-bound: one sentence per request, concurrency 64",
        "tabular": "mid-weight: single-row requests to a 64-1024-1024-10 MLP, concurrency 64",
    }
    for model, title in titles.items():
        rows = [
            [
                systems[k]["label"],
                *cells(points.get(f"peers/{k}/{model}/c64"), "rows_per_s", "p50", "p99", "cpu:server/2", "errors"),
            ]
            for k in present
        ]
        if any(points.get(f"peers/{k}/{model}/c64") for k in present):
            out += f"\n\n**{model}** ({title})\n\n" + table(
                "system | rows/s | p50 ms | p99 ms | server CPU ms/req | errors", rows
            )
    checks = results.get("output_check") or {}
    if checks:
        names = {s["server"]: s["label"] for s in systems.values()}
        models = list(results["settings"]["served_versions"])
        rows = [[names.get(s, s), *(v.get(m, "–") for m in models)] for s, v in checks.items()]
        out += f"\n\n{text['same_answers']}\n\n" + table(" | ".join(["system", *models]), rows)
    return out + "\n\n" + text["server_cpu"]


def section_changes(results: dict[str, Any], previous: dict[str, Any] | None, text: dict[str, str]) -> str:
    if not previous:
        return "## Changes since the previous report\n\nNo previous results.json next to the plots: the baseline."
    rows = []
    for name, value in headline(results).items():
        old = previous["headline"].get(name)
        if value is not None or old is not None:
            rows.append(
                [name, _num(old), _num(value), f"{(value - old) / old:+.0%}" if value is not None and old else "–"]
            )
    meta = previous["meta"]
    return (
        text["changes"].format(started=meta["started"], commit=meta["git"]["commit"])
        + "\n\n"
        + table("figure | previous | now | change", rows)
    )


def _num(value: float | None) -> str:
    return "–" if value is None else (f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}")


def render_markdown(
    results: dict[str, Any],
    bars: list[dict[str, Any]],
    plots: dict[str, str],
    previous: dict[str, Any] | None,
    history: str,
    gpu: tuple[dict[str, Any] | None, list],
) -> str:
    """BENCHMARKS.md (gpu is (the last GPU run's results, its bars)), or gpu.md when this run is the GPU's."""
    text, meta = prose(), results["meta"]

    def plot(name: str, alt: str) -> str:
        return f"\n\n![{alt}]({plots[name]})" if name in plots else ""

    note = f"\n\n**About this run.** {results['note']}" if results.get("note") else ""
    if results["profile"].startswith("gpu"):
        verify = [
            [k, f"{v.get('min_cosine', math.nan):.5f}", v.get("error", "–")] for k, v in results["verify"].items()
        ]
        parts = [
            text["gpu_intro"].format(profile=results["profile"]) + note,
            section_machine(results),
            section_bars(results, bars, "## Bars", text),
            "## Embeddings against the CPU fp32 model\n\n" + table("where | min cosine (≥ 0.999) | error", verify),
            section_engine(results, text).split("\n\n", 1)[1],
            section_worker(results, text).split("\n\n", 1)[1] + plot("gpu", "gpu"),
        ]
        return "\n\n".join(parts) + "\n"
    gpu_results, gpu_bars = gpu
    if gpu_results:
        gpu_meta = gpu_results["meta"]
        device = (gpu_meta.get("gpu") or {}).get("device_name") or "a GPU"
        gpu_part = text["gpu"].format(device=device, started=gpu_meta["started"], commit=gpu_meta["git"]["commit"])
        gpu_part += f" {gpu_results['note']}" if gpu_results.get("note") else ""
        gpu_part += "\n\n" + table("bar | target | measured | status", judged(gpu_bars, gpu_results))
    else:
        gpu_part = "## 6. On a GPU\n\nNo GPU run yet: `scripts/bench/gpu_device.sh` on a machine with a CUDA device."
    parts = [
        text["intro"].format(started=meta["started"], commit=meta["git"]["commit"]) + note,
        section_machine(results),
        section_bars(results, bars, "## The bars (issues 5 and 15)", text) + "\n\n" + text["limits_link"],
        section_engine(results, text) + plot("engine", "engines in-process"),
        section_worker(results, text) + plot("worker", "worker throughput and latency"),
        section_router(results, text) + plot("router", "router hop and scaling"),
        section_scaling(results, text),
        section_peers(results, text) + plot("peers", "peers"),
        gpu_part,
        section_changes(results, previous, text),
        history.strip(),
    ]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- plots


def plot_all(results: dict[str, Any], directory: Path, gpu: bool) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, made = results["points"], {}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        directory.mkdir(parents=True, exist_ok=True)
        fig.savefig(directory / f"{name}.png", dpi=100)
        plt.close(fig)
        made[name] = directory / f"{name}.png"

    def series(ax: Any, xs: list[Any], s: list[dict[str, float] | None], **kw: Any) -> None:
        ys = [x["median"] if x else float("nan") for x in s]
        err = [[x["median"] - x["min"] if x else 0 for x in s], [x["max"] - x["median"] if x else 0 for x in s]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, **kw)

    def curve(ax: Any, records: list[dict[str, Any]], metric: str, **kw: Any) -> None:
        """One line over concurrency, a point per record (closed loop only)."""
        records = sorted((r for r in records if r.get("concurrency")), key=lambda r: r["concurrency"])
        series(ax, [r["concurrency"] for r in records], [stat(r, metric) for r in records], **kw)

    def log_y(ax: Any) -> None:
        """Log scale where there is something to scale (a partial run may have no figure for a plot)."""
        if math.isfinite(ax.dataLim.y1) and ax.dataLim.y1 > 0:
            ax.set_yscale("log")

    def bars(ax: Any, labels: list[str], records: list[Any]) -> None:
        for i, pct in enumerate(("p50", "p90", "p99")):
            ys = [median(r, pct) or float("nan") for r in records]
            ax.bar([x + (i - 1) * 0.27 for x in range(len(labels))], ys, 0.27, label=pct)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        log_y(ax)
        ax.set_ylabel("latency (ms)")
        ax.legend(fontsize=8)

    def finish(ax: Any, title: str, xlabel: str, ylabel: str, log2: bool = True) -> None:
        if log2:
            ax.set_xscale("log", base=2)
        log_y(ax)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)

    models = list(results["settings"]["served_versions"])
    engines = {k: e for k, e in results["engine"].items() if e.get("runs")}
    if engines and not gpu:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
        for ax, model in zip(axes[0], ("digits", "minilm"), strict=True):
            for key, entry in engines.items():
                if entry["model"] == model:
                    stats = engine_stats(entry)
                    series(ax, list(stats), list(stats.values()), label=f"{key} ({entry.get('backend')})")
            finish(ax, f"{model}: engine in-process, one thread", "batch size (rows)", "rows/s")
        save(fig, "engine")
    worker = {k: r for k, r in points.items() if k.startswith("worker/") and r.get("concurrency")}

    def single_row(model: str, mode: str) -> list[dict[str, Any]]:
        """The worker's closed-loop points with 1-row requests, for one model and server configuration."""
        return [r for r in worker.values() if (r["model"], r["tags"]["batching"], r["batch_rows"]) == (model, mode, 1)]

    if worker and not gpu:
        fig, axes = plt.subplots(len(models), 2, figsize=(12, 4.2 * len(models)), squeeze=False)
        for (left, right), model in zip(axes, models, strict=True):
            for mode in ("off", "on"):
                curve(left, single_row(model, mode), "rows_per_s", label=f"batching {mode}")
            finish(left, f"{model}: worker throughput", "concurrency (1-row requests, closed loop)", "rows/s")
            recs = [
                r
                for k, r in points.items()
                if k.startswith("worker/") and r["model"] == model and "/overhead" not in k and "/probe" not in k
            ]
            bars(right, [r["tags"]["batching"] + "\n" + r["label"].replace("open ", "open\n") for r in recs], recs)
            right.set_title(f"{model}: worker latency (batching off/on; open loop = Poisson)")
        save(fig, "worker")
    hops = (("direct", 1), ("router1", 1), ("cache", 1), ("direct", 64), ("router1", 64))
    router = [points.get(f"router/{name}/digits/c{c}") for name, c in hops]
    if any(router) and not gpu:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
        bars(left, ["direct\nc1", "router\nc1", "cache hit\nc1", "direct\nc64", "router\nc64"], router)
        left.set_title("digits: worker direct vs through the router")
        for i, name in enumerate(("router1", "router2")):
            ys = [median(points.get(f"router/{name}/{m}/c64"), "rows_per_s") or float("nan") for m in models]
            right.bar([x + (i - 0.5) * 0.38 for x in range(len(models))], ys, 0.38, label=f"{i + 1} worker(s)")
        right.set_xticks(range(len(models)), [f"{m}, c64" for m in models])
        log_y(right)
        right.set(ylabel="rows/s through the router", title="scaling: workers behind one router")
        right.legend(fontsize=8)
        save(fig, "router")
    systems = [k for k in results.get("systems", {}) if any(p.startswith(f"peers/{k}/") for p in points)]
    if systems and not gpu:
        labels = {k: results["systems"][k]["label"].replace(", ", "\n", 1).replace(" → ", "→\n") for k in systems}
        conc = sorted(
            {r["concurrency"] for k, r in points.items() if k.startswith("peers/") and r["model"] == "digits"}
        )
        fig, axes = plt.subplots(2, 2, figsize=(13, 9))
        for key in systems:
            mine = [r for k, r in points.items() if k.startswith(f"peers/{key}/digits/")]
            curve(axes[0][0], mine, "throughput_rps", label=results["systems"][key]["label"])
        finish(
            axes[0][0], "digits: throughput vs concurrency", "concurrency (1-row requests, closed loop)", "requests/s"
        )
        for ax, c in ((axes[0][1], conc[-1]), (axes[1][0], conc[0])):
            bars(ax, [labels[k] for k in systems], [points.get(f"peers/{k}/digits/c{c}") for k in systems])
            ax.set_title(f"digits: latency at concurrency {c}")
        minilm = [median(points.get(f"peers/{k}/minilm/c64"), "rows_per_s") or 0 for k in systems]
        axes[1][1].bar(range(len(systems)), minilm, color="tab:green")
        axes[1][1].set_xticks(range(len(systems)), [labels[k] for k in systems], fontsize=8)
        axes[1][1].set(ylabel="rows/s", title="minilm: throughput at concurrency 64")
        save(fig, "peers")
    if gpu and (engines or worker):
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
        for key, entry in engines.items():
            stats = engine_stats(entry)
            left.plot(list(stats), [s["median"] for s in stats.values()], marker="o", label=key)
        finish(left, "engine in-process, one thread", "batch size (rows)", "rows/s")
        for name in sorted({(r["model"], r["tags"]["batching"]) for r in worker.values() if r["batch_rows"] == 1}):
            curve(right, single_row(*name), "rows_per_s", label=f"{name[0]}, {name[1]}")
        finish(right, "served, single-row requests", "concurrency", "rows/s")
        save(fig, "gpu")
    return made


# ---------------------------------------------------------------- outputs


def write_outputs(
    results: dict[str, Any], matrix: dict[str, Any], profile: dict[str, Any], output: Path, plots_dir: Path
) -> list[Path]:
    """Plots, the results JSON (the previous one is read first, for the comparison) and the markdown."""
    if results.get("format") != 2:
        raise SystemExit("render: not a results file of this runner (format 2); old formats are not read")
    gpu = profile["bars"] == "gpu"
    results_path = plots_dir / ("gpu_results.json" if gpu else "results.json")
    previous = json.loads(results_path.read_text()) if results_path.is_file() else None
    if previous and previous.get("format") == 2 and previous["meta"]["started"] != results["meta"]["started"]:
        results["previous"] = {
            "meta": {"started": previous["meta"]["started"], "git": previous["meta"]["git"]},
            "headline": previous.get("headline") or headline(previous),
        }
    # Re-rendering the same run keeps the comparison it was first written with.
    previous_summary = results.get("previous")
    results["headline"] = headline(results)
    plots = plot_all(results, plots_dir, gpu)
    links = {name: os.path.relpath(path, output.parent) for name, path in plots.items()}
    plots_dir.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=1, default=str))
    output.parent.mkdir(parents=True, exist_ok=True)
    text = output.read_text() if output.is_file() else ""
    history = (
        text[text.index(f"\n{HISTORY}") + 1 :]
        if f"\n{HISTORY}" in text
        else prose()["history"].format(date=time.strftime("%Y-%m-%d"), commit=results["meta"]["git"]["commit"])
    )
    gpu_path = plots_dir / "gpu_results.json"
    last_gpu = json.loads(gpu_path.read_text()) if gpu_path.is_file() and not gpu else None
    bars = matrix["bars"][profile["bars"]]
    output.write_text(
        render_markdown(results, bars, links, previous_summary, history, (last_gpu, matrix["bars"]["gpu"]))
    )
    return [output, *plots.values(), results_path]
