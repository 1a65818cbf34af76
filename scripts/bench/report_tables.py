"""The sections of BENCHMARKS.md as markdown: one function per section of the report.

Cells read ``median [min–max]`` over the runs (just the median after one run); a point
that failed says so in its row instead of leaving the table out.
"""

from __future__ import annotations

from typing import Any

from report_bars import bars
from report_env import busy_warning
from report_measure import first_error, stat
from report_plots import engine_stats


def fmt(s: dict[str, float] | None, digits: int = 0, unit: str = "") -> str:
    """``median [min–max]`` (just the median when there was one run)."""
    if s is None:
        return "–"
    spec = f",.{digits}f"
    text = format(s["median"], spec)
    if s["n"] > 1:
        text += f" [{format(s['min'], spec)}–{format(s['max'], spec)}]"
    return text + unit


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pct_digits(record: dict[str, Any] | None) -> int:
    s = stat(record, "p50")
    return 2 if s is None or s["median"] < 10 else 1


def _latency(record: dict[str, Any] | None, metric: str) -> str:
    return fmt(stat(record, metric), 2 if (stat(record, metric) or {"median": 0})["median"] < 10 else 1)


def _errors(record: dict[str, Any] | None) -> str:
    """Non-OK status counts over the runs, or the failure, for a table cell."""
    if record is None:
        return "not measured"
    error = first_error(record)
    bad: dict[str, int] = {}
    for run in record.get("runs", []):
        for code, count in (run.get("codes") or {}).items():
            if code != "OK":
                bad[code] = bad.get(code, 0) + count
    if error and not any(r.get("rows_per_s") for r in record.get("runs", [])):
        return f"failed: {error.splitlines()[0][:120]}"
    return ", ".join(f"{k} {v}" for k, v in bad.items()) or "none"


# ---------------------------------------------------------------- sections


def section_machine(results: dict[str, Any]) -> str:
    meta, settings = results["meta"], results["settings"]
    packages = ", ".join(f"{k} {v}" for k, v in meta["packages"].items())
    git = meta["git"]
    commit = git["commit"] + (f" (+{git['modified_files']} modified files)" if git.get("modified_files") else "")
    rows = [
        ["run", f"{meta.get('started', '?')}, took {meta.get('took_s', '?')} s"],
        ["CPU", f"{meta['cpu_model']}, {meta['cpus']} CPUs ({meta['usable_cpus']} usable)"],
        ["memory", f"{meta['memory_gib']} GiB"],
        ["OS", f"{meta['os']}, kernel {meta['kernel']}"],
        ["Shunter", f"commit {commit}; Python {meta['python']}; {packages}"],
    ]
    for name, peer in (results.get("peers") or {}).items():
        if peer.get("status") == "ok":
            detail = ", ".join(f"{k} {v}" for k, v in (peer.get("versions") or {}).items())
            servers = [s for n, s in (results.get("servers") or {}).items() if n.startswith(name) and s.get("metadata")]
            if servers:
                md = servers[0]["metadata"]
                detail += f"; server reports {md.get('name')} {md.get('version')}"
            rows.append([name, detail])
        else:
            rows.append([name, "unavailable (see section 5)"])
    load = meta.get("load_at_start", [0])
    rows.append(["load average (1 min)", f"{load[0]:.2f} at start, {meta.get('load_at_end', [0])[0]:.2f} at end"])
    rows.append(
        [
            "settings",
            f"{settings['runs']} interleaved run(s) per figure; {settings['duration_s']:g} s measured "
            f"+ {settings['warmup_s']:g} s warm-up per point; {settings['client_processes']} "
            f"client process(es) of `shunter bench`; served versions "
            + ", ".join(f"{m} v{v}" for m, v in settings["served_versions"].items())
            + " (ONNX)",
        ]
    )
    text = "## Machine and versions\n\n" + table(["", ""], rows)
    warning = busy_warning(load)
    if warning:
        text += f"\n\n**Note:** {warning}."
    if settings.get("quick"):
        text += (
            "\n\n**Quick run** (`--quick`): one short run per point, for a smoke test only; "
            "the figures are not comparable with a full run."
        )
    return text


def section_bars(results: dict[str, Any]) -> str:
    rows = [[b["bar"], b["target"], b["measured"], b["status"]] for b in bars(results)]
    return (
        "## The bars (issue 5)\n\nFrom the medians below. *met* / *missed* compare the median with the target; "
        "*not measured* means the section did not run or failed (see its section).\n\n"
        + table(["bar", "target", "measured", "status"], rows)
        + "\n\nWhere the RPC-bound bars' time goes (profiles, the floor of a Python gRPC hop, what did not "
        "help) and what would remove it: [docs/benchmarks/limits.md](docs/benchmarks/limits.md)."
    )


def section_engine(results: dict[str, Any], plots: dict[str, str]) -> str:
    entries = {k: e for k, e in (results.get("engine") or {}).items() if e.get("runs")}
    text = (
        "## 1. The physical limit: engines in-process\n\nEach engine built as the worker builds it (handler "
        "included for minilm), one intra-op thread, called in a loop on one thread with the inputs "
        "`shunter bench` sends. rows/s, median [min–max] of the runs.\n\n"
    )
    if not entries:
        failed = [f"{k}: {(e.get('errors') or ['?'])[0][-300:]}" for k, e in (results.get("engine") or {}).items()]
        return text + ("Not measured." if not failed else "Failed:\n\n```\n" + "\n".join(failed) + "\n```")
    stats = {k: engine_stats(e) for k, e in entries.items()}
    sizes = sorted({b for s in stats.values() for b in s})
    header = ["batch"] + [f"{k} ({entries[k].get('backend', '?')})" for k in entries]
    rows = [[str(b)] + [fmt(stats[k].get(b)) for k in entries] for b in sizes]
    text += table(header, rows)
    return text + _plot_link(plots, "engine", "engines in-process")


def section_worker(results: dict[str, Any], plots: dict[str, str]) -> str:
    points = results["points"]
    text = (
        "## 2. The worker\n\nOne `shunter worker` process per configuration (batching off: no "
        "`dynamic_batching`; on: the model's config, `max_queue_delay_us` 2000), single-row requests, "
        "closed loop. *worker CPU* is the worker process's CPU time per request; *client CPU* is the cores the "
        "load generator itself used (near 1 per client process means the client, not the server, set the pace: "
        "raise `--client-processes` on a bigger machine).\n\n"
    )
    if results["errors"].get("worker"):
        text += f"**Section failed:** `{results['errors']['worker'][:500]}`\n\n"
    keys = [
        k
        for k in points
        if k.startswith("worker/") and not k.endswith("/overhead") and "/open" not in k and "/probe" not in k
    ]
    if not keys:
        return text + "Not measured."
    rows = []
    for key in keys:
        r = points[key]
        rows.append(
            [
                r["model"],
                r["tags"]["batching"],
                str(r["concurrency"]),
                fmt(stat(r, "rows_per_s")),
                _latency(r, "p50"),
                _latency(r, "p90"),
                _latency(r, "p99"),
                fmt(stat(r, "", "worker"), 3),
                fmt(stat(r, "client_cpu"), 2),
                _errors(r),
            ]
        )
    text += table(
        [
            "model",
            "batching",
            "concurrency",
            "rows/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "worker CPU ms/req",
            "client CPU (cores)",
            "errors",
        ],
        rows,
    )
    over = [points[k] for k in points if k.startswith("worker/") and k.endswith("/overhead")]
    if over:
        text += (
            "\n\n**Serving overhead**: batching off, requests of the engine's best batch size at concurrency 4 "
            "(the engine is never idle), against the engine in-process at that batch size.\n\n"
        )
        rows = []
        for r in over:
            engine = _engine_at(results, r["model"], r["batch_rows"])
            served = stat(r, "rows_per_s")
            ratio = f"{served['median'] / engine['median']:.2f}" if served and engine else "–"
            rows.append([r["model"], str(r["batch_rows"]), fmt(served), fmt(engine), ratio])
        text += table(["model", "rows/request", "served rows/s", "in-process rows/s", "served / in-process"], rows)
    opened = [points[k] for k in points if k.startswith("worker/") and "/open" in k]
    if opened:
        text += (
            "\n\n**Open loop** (Poisson arrivals, batching on) at a fraction of the capacity. The capacity is "
            "the open loop's: the Poisson client costs more CPU than the closed loop on the same cores, and a "
            "batcher is cheapest per request when saturated, so the closed-loop best may not be sustainable "
            "with arrivals spread out. Probes offer the closed-loop best, then 95 % of what completed, until "
            "a rate is kept up (completed within three Poisson standard deviations of offered). Latency "
            "counts from each request's scheduled time, so queueing is not hidden; a point that did not keep "
            "up was overloaded, and its percentiles say nothing about bursts.\n\n"
        )
        detail = results.get("capacity_detail") or {}
        if detail:
            text += (
                "Capacity, req/s: "
                + "; ".join(
                    f"{m} {d['open_loop']:,.0f} (closed loop {d['closed_loop']:,.0f}; probes offered → completed: "
                    + ", ".join(f"{o:,.0f} → {c:,.0f}" for o, c in d.get("probes", []))
                    + ")"
                    for m, d in detail.items()
                )
                + ".\n\n"
            )
        rows = []
        for r in opened:
            p50, p99 = stat(r, "p50"), stat(r, "p99")
            ratio = f"{p99['median'] / p50['median']:.1f}" if p50 and p99 and p50["median"] else "–"
            lag = stat(r, "send_lag_p99_ms")
            rows.append(
                [
                    r["model"],
                    f"{r['tags']['fraction']:.0%}",
                    f"{r['rate']:,.0f}",
                    fmt(stat(r, "throughput_rps")),
                    _latency(r, "p50"),
                    _latency(r, "p90"),
                    _latency(r, "p99"),
                    ratio,
                    fmt(lag, 2),
                ]
            )
        text += table(
            [
                "model",
                "load",
                "offered req/s",
                "achieved req/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99/p50",
                "client send lag p99 ms",
            ],
            rows,
        )
    return text + _plot_link(plots, "worker", "worker throughput and latency")


def _engine_at(results: dict[str, Any], model: str, batch: int) -> dict[str, float] | None:
    version = results["settings"]["served_versions"][model]
    entry = (results.get("engine") or {}).get(f"{model}/v{version}")
    return engine_stats(entry).get(batch) if entry else None


def section_router(results: dict[str, Any], plots: dict[str, str]) -> str:
    points = results["points"]
    text = (
        "## 3. The router hop\n\nA `shunter up` cluster (Redis, registry, 1 worker, router); the same load "
        "sent to the worker directly and through the router with a data key (auth, rate limit, validation, "
        "split and balancing all on the path). Added = router − direct, of the medians.\n\n"
    )
    if results["errors"].get("router"):
        text += f"**Section failed:** `{results['errors']['router'][:500]}`\n\n"
    rows = []
    for c in (1, 64):
        direct, routed = points.get(f"router/direct/digits/c{c}"), points.get(f"router/router1/digits/c{c}")
        if not direct and not routed:
            continue
        cells = [f"digits, c{c}"]
        for metric in ("p50", "p99"):
            d, r = stat(direct, metric), stat(routed, metric)
            added = f"{r['median'] - d['median']:+.2f}" if d and r else "–"
            cells += [_latency(direct, metric), _latency(routed, metric), added]
        cells += [
            fmt(stat(direct, "throughput_rps")),
            fmt(stat(routed, "throughput_rps")),
            fmt(stat(routed, "", "cluster"), 3),
        ]
        rows.append(cells)
    if not rows:
        return text + "Not measured."
    text += table(
        [
            "load",
            "direct p50 ms",
            "router p50 ms",
            "added p50",
            "direct p99 ms",
            "router p99 ms",
            "added p99",
            "direct req/s",
            "router req/s",
            "cluster CPU ms/req",
        ],
        rows,
    )
    cache = points.get("router/cache/digits/c1")
    if cache:
        text += (
            f"\n\n**Cache hit** (the router's response cache on for digits; every call sends the same input, "
            f"so all but the first hit): p50 {_latency(cache, 'p50')} ms, p99 {_latency(cache, 'p99')} ms, "
            f"{fmt(stat(cache, 'throughput_rps'))} req/s at concurrency 1."
        )
    text += (
        "\n\n*cluster CPU* is the CPU time of every process of the cluster (router, worker, registry, Redis) per "
        'request: the "CPU per request, all Shunter processes together" of the bars.'
    )
    return text + _plot_link(plots, "router", "router hop and scaling")


def section_scaling(results: dict[str, Any]) -> str:
    points = results["points"]
    cpus = results["meta"]["usable_cpus"]
    text = (
        "## 4. Scaling: 1 vs 2 workers behind one router\n\nTwo `shunter up` clusters, with 1 and with 2 "
        "workers, concurrency 64, single-row requests.\n\n"
    )
    rows = []
    for model in ("digits", "minilm"):
        one, two = points.get(f"router/router1/{model}/c64"), points.get(f"router/router2/{model}/c64")
        if not one and not two:
            continue
        a, b = stat(one, "rows_per_s"), stat(two, "rows_per_s")
        ratio = f"{b['median'] / a['median']:.2f}×" if a and b else "–"
        rows.append([model, fmt(a), fmt(b), ratio, _latency(one, "p99"), _latency(two, "p99")])
    if not rows:
        return text + "Not measured."
    text += table(
        ["model", "1 worker rows/s", "2 workers rows/s", "2 / 1", "1 worker p99 ms", "2 workers p99 ms"], rows
    )
    text += (
        f"\n\n**What {cpus} CPUs can and cannot show.** The load generator, the router, Redis and every worker "
        f"share the same {cpus} CPUs, so a second worker adds no compute: it can only show that the router "
        "spreads load over two workers without losing throughput, and whether one worker process was "
        "leaving a core idle (a Python process saturates one core; a second worker can use the other). "
        "Linear scaling needs each worker on its own cores (or machine); measure that on a bigger box with "
        "`--client-processes` raised so the client is not the limit."
    )
    return text


def section_peers(results: dict[str, Any], plots: dict[str, str]) -> str:
    points = results["points"]
    text = (
        "## 5. Peers: Shunter, NVIDIA Triton and Seldon MLServer\n\nSame machine, same ONNX files, same "
        "ONNX Runtime build and thread settings (1 intra-op, 1 inter-op thread per instance), same model "
        "handler for minilm (tokenise, mean-pool), the same load generator (`shunter bench`, Open Inference "
        "Protocol over gRPC), and the runs interleaved: each round visits every system. Batching as each "
        "system offers it, set from the same config: Shunter's dynamic batcher and Triton's "
        "(max batch 64, queue delay 2 ms, preferred 16/32/64), MLServer's adaptive batching (max batch 64, "
        "max batch time 2 ms). Each peer runs from its own venv under `.bench-venvs/`. Triton is the build "
        "that PyPI's `nvidia-pytriton` bundles, which ships only Triton's Python backend: Triton's C++ server "
        "batches, and each batch goes through a Python backend stub to PyTriton's process (over ZeroMQ), where "
        "the ONNX Runtime session runs. Triton's native onnxruntime backend (a container image) would skip "
        "that hop.\n\n"
    )
    peers = results.get("peers") or {}
    for name, peer in peers.items():
        if peer.get("status") != "ok":
            text += f"**{name} could not be used:**\n\n```\n{(peer.get('reason') or '?')[-1500:]}\n```\n\n"
    systems = results.get("peer_systems") or {}
    for system in systems.values():
        if system.get("error"):
            text += f"**{system['label']} did not start:**\n\n```\n{system['error'][-1500:]}\n```\n\n"
    if results["errors"].get("peers"):
        text += f"**Section failed:** `{results['errors']['peers'][:500]}`\n\n"
    present = [k for k in systems if any(p.startswith(f"peers/{k}/") for p in points)]
    if not present:
        return text + "Not measured."
    concurrencies = sorted(
        {r["concurrency"] for k, r in points.items() if k.startswith("peers/") and r["model"] == "digits"}
    )
    rows = []
    for key in present:
        cells = [systems[key]["label"]]
        for c in concurrencies:
            cells.append(fmt(stat(points.get(f"peers/{key}/digits/c{c}"), "throughput_rps")))
        c1, top = points.get(f"peers/{key}/digits/c1"), points.get(f"peers/{key}/digits/c{concurrencies[-1]}")
        cells += [
            _latency(c1, "p50"),
            _latency(top, "p50"),
            _latency(top, "p99"),
            fmt(stat(top, "", "server"), 3),
            fmt(stat(top, "client_cpu"), 2),
            _errors(top),
        ]
        rows.append(cells)
    top_c = concurrencies[-1]
    text += "**digits** (RPC-bound: single-row requests, a tiny MLP)\n\n"
    text += table(
        [
            "system",
            *[f"req/s c{c}" for c in concurrencies],
            "p50 ms c1",
            f"p50 ms c{top_c}",
            f"p99 ms c{top_c}",
            f"server CPU ms/req c{top_c}",
            f"client CPU (cores) c{top_c}",
            "errors",
        ],
        rows,
    )
    rows = []
    for key in present:
        r = points.get(f"peers/{key}/minilm/c64")
        rows.append(
            [
                systems[key]["label"],
                fmt(stat(r, "rows_per_s")),
                _latency(r, "p50"),
                _latency(r, "p99"),
                fmt(stat(r, "", "server"), 2),
                _errors(r),
            ]
        )
    text += "\n\n**minilm** (compute-bound: one sentence per request, concurrency 64)\n\n"
    text += table(["system", "rows/s", "p50 ms", "p99 ms", "server CPU ms/req", "errors"], rows)
    checks = results.get("output_check") or {}
    if checks:
        text += (
            "\n\n**Same answers.** One request of 4 rows per model, sent to each system, outputs compared with the "
            "Shunter worker's:\n\n"
        )
        names = {system["server"]: system["label"] for system in systems.values()}
        rows = [
            [names.get(server, server), *(verdict.get(m, "–") for m in ("digits", "minilm"))]
            for server, verdict in checks.items()
        ]
        text += table(["system", "digits", "minilm"], rows)
    text += (
        "\n\n*server CPU* is the CPU time of all the system's processes (Triton: tritonserver, its Python stubs "
        "and PyTriton's proxy process; MLServer: the server and its inference-pool workers; Shunter router: the "
        "whole cluster) per request."
    )
    return text + _plot_link(plots, "peers", "peers")


def _plot_link(plots: dict[str, str], name: str, alt: str) -> str:
    return f"\n\n![{alt}]({plots[name]})" if name in plots else ""
