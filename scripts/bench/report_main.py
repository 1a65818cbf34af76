"""The performance report (issue 5): Shunter measured, and measured against Triton and MLServer.

Run it through ``scripts/bench/report`` (which sets up .venv and the example models
first). Sections, each figure the median of ``--runs`` interleaved runs with min–max:

1. engine: each example model's engine in-process, rows/s at batch 1 … max (the limit);
2. worker: batching off vs on, closed loop at concurrency 1/16/64; a request of the
   engine's best batch size (batching off, concurrency 4) against the in-process limit;
   open loop (Poisson) at 50 % and 90 % of the measured capacity;
3. router: the hop over calling the worker directly (p50/p99 at concurrency 1 and 64),
   and a cache hit;
4. scaling: 1 vs 2 workers behind one router;
5. peers: Triton (dynamic batching, 1 and 2 instances) and MLServer (adaptive batching,
   parallel_workers 0 and 1) next to the Shunter worker and router, same ONNX files,
   same thread settings, same load generator, interleaved.

Every system serves the ONNX versions of the examples (digits v2, minilm v1), so all of
them run the same file through the same ONNX Runtime build with one intra-op thread.
Writes BENCHMARKS.md (keeping its History section), PNG plots and results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from report_env import busy_warning, machine  # noqa: E402
from report_measure import Point, Settings, median, run_rounds  # noqa: E402
from report_peers import PEERS, install, launch_mlserver, launch_triton, model_specs, versions  # noqa: E402
from report_servers import (  # noqa: E402
    Server,
    enable_cache,
    launch_cluster,
    launch_worker,
    stop_all,
    wait_ready,
)

from services.common.model_config import version_config_text  # noqa: E402

#: The version of each model every system serves: the ONNX file, so all run the same graph.
SERVED = {"digits": "2", "minilm": "1"}
#: Engines measured in-process (section 1): every digits backend, and minilm.
ENGINES_FULL = (("digits", "1"), ("digits", "2"), ("digits", "3"), ("minilm", "1"))
ENGINES_QUICK = (("digits", "2"), ("minilm", "1"))
SECTIONS = ("engine", "worker", "router", "peers")
#: Concurrency of the serving-overhead point: enough requests that the engine never waits.
OVERHEAD_CONCURRENCY = 4
OPEN_LOOP_FRACTIONS = (0.5, 0.9)
WORKER_MATCH = "main worker"  # a cluster's worker processes: `python -m services.cli.main worker ...`


class Context:
    """What every phase needs: settings, paths, and the results being filled in."""

    def __init__(self, args: argparse.Namespace, settings: Settings, work: Path, results: dict[str, Any]):
        self.args = args
        self.settings = settings
        self.work = work
        self.logs = work / "logs"
        self.results = results
        self.points: dict[str, Any] = results["points"]
        self.concurrencies: tuple[int, ...] = (1, 64) if args.quick else (1, 16, 64)
        self.source: Path = args.model_repository
        self.repo_on = bench_repository(self.source, work / "repo-on", batching=True)
        self.repo_off = bench_repository(self.source, work / "repo-off", batching=False)

    def note_servers(self, servers: list[Server], failed: dict[str, str]) -> None:
        for server in servers:
            self.results["servers"][server.name] = {
                "address": server.address,
                "metadata": server.metadata,
                "error": failed.get(server.name),
            }


def bench_repository(source: Path, dest: Path, *, batching: bool) -> Path:
    """A repository with only the served version of each model, batching on or off.

    The version's merged config becomes the model's config.yaml, so a request without a
    version, and `shunter up`'s production version, are that one. Files are hard-linked
    where the file system allows.
    """
    for model, version in SERVED.items():
        text, _ = version_config_text(source / model, version)
        config = yaml.safe_load(text)
        if batching:
            config.setdefault("dynamic_batching", {"max_queue_delay_us": 2000})
        else:
            config.pop("dynamic_batching", None)
        target = dest / model
        target.mkdir(parents=True)
        (target / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        for entry in (source / model).iterdir():
            if entry.name == "config.yaml" or (entry.is_dir() and entry.name.isdigit() and entry.name != version):
                continue
            if entry.is_dir():
                shutil.copytree(
                    entry, target / entry.name, copy_function=_link, ignore=shutil.ignore_patterns("config.yaml")
                )
            else:
                _link(entry, target / entry.name)
    return dest


def _link(src: Any, dst: Any) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---------------------------------------------------------------- 1. engine


def phase_engine(ctx: Context) -> None:
    engines = ENGINES_QUICK if ctx.args.quick else ENGINES_FULL
    seconds = 0.15 if ctx.args.quick else 0.6
    store = ctx.results["engine"]
    for round_index in range(ctx.settings.runs):
        shift = round_index % len(engines)
        for model, version in engines[shift:] + engines[:shift]:
            argv = [
                sys.executable,
                str(Path(__file__).with_name("report_engine.py")),
                "--model-repository",
                str(ctx.source),
                "--model",
                model,
                "--version",
                version,
                "--seconds",
                str(seconds),
            ]
            entry = store.setdefault(f"{model}/v{version}", {"model": model, "version": version, "runs": []})
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
            if done.returncode != 0:
                entry.setdefault("errors", []).append(done.stderr.strip()[-2000:])
                print(f"  engine {model} v{version}: FAILED\n{done.stderr.strip()[-800:]}", flush=True)
                continue
            data = json.loads(done.stdout.strip().splitlines()[-1])
            entry["backend"] = data["backend"]
            entry["runs"].append({int(b): v for b, v in data["rows_per_s"].items()})
            cells = ", ".join(f"b{b} {v:.0f}" for b, v in data["rows_per_s"].items())
            print(
                f"  [engine run {round_index + 1}] {model} v{version} ({data['backend']}): {cells} rows/s", flush=True
            )


def engine_best_batch(ctx: Context, model: str) -> int:
    """The batch size at which the served engine does the most rows/s (else its max batch)."""
    entry = ctx.results["engine"].get(f"{model}/v{SERVED[model]}")
    if entry and entry["runs"]:
        sizes = entry["runs"][0].keys()
        medians = {b: sorted(run[b] for run in entry["runs"] if b in run)[len(entry["runs"]) // 2] for b in sizes}
        return max(medians, key=medians.get)
    text, _ = version_config_text(ctx.source / model, SERVED[model])
    return int(yaml.safe_load(text).get("max_batch_size") or 1)


# ---------------------------------------------------------------- 2. worker


def phase_worker(ctx: Context) -> None:
    off = launch_worker("worker-batching-off", ctx.repo_off, SERVED, ctx.logs)
    on = launch_worker("worker-batching-on", ctx.repo_on, SERVED, ctx.logs)
    servers = [off, on]
    try:
        failed = wait_ready(servers)
        ctx.note_servers(servers, failed)
        if failed:
            raise RuntimeError("; ".join(f"{name}: {why}" for name, why in failed.items()))
        points: list[Point] = []
        for model in SERVED:
            for mode, server in (("off", off), ("on", on)):
                for c in ctx.concurrencies:
                    points.append(
                        _worker_point(f"worker/{mode}/{model}/c{c}", server, mode, model, f"c{c}", concurrency=c)
                    )
            best = engine_best_batch(ctx, model)
            points.append(
                _worker_point(
                    f"worker/off/{model}/overhead",
                    off,
                    "off",
                    model,
                    f"c{OVERHEAD_CONCURRENCY} × {best} rows",
                    concurrency=OVERHEAD_CONCURRENCY,
                    batch_rows=best,
                )
            )
        run_rounds(points, ctx.settings, ctx.points, "worker")
        open_points = []
        for model in SERVED:
            capacity = max(
                (median(ctx.points.get(f"worker/on/{model}/c{c}"), "throughput_rps") or 0) for c in ctx.concurrencies
            )
            ctx.results["capacity"][model] = capacity
            if capacity <= 0:
                continue
            for fraction in OPEN_LOOP_FRACTIONS:
                pct = round(fraction * 100)
                point = _worker_point(f"worker/on/{model}/open{pct}", on, "on", model, f"open {pct}%")
                point.rate = fraction * capacity
                point.tags["fraction"] = fraction
                open_points.append(point)
        run_rounds(open_points, ctx.settings, ctx.points, "worker open loop")
    finally:
        stop_all(servers)


def _worker_point(key: str, server: Server, mode: str, model: str, label: str, **load: Any) -> Point:
    return Point(
        key=key,
        section="worker",
        system=f"worker, batching {mode}",
        model=model,
        label=label,
        server=server,
        target=server.address,
        cpu={"worker": (server, None)},
        tags={"batching": mode},
        **load,
    )


# ---------------------------------------------------------------- 3 + 4. router and scaling


def phase_router(ctx: Context) -> None:
    one = launch_cluster("cluster-1-worker", ctx.repo_on, SERVED, 1, ctx.logs)
    two = launch_cluster("cluster-2-workers", ctx.repo_on, SERVED, 2, ctx.logs)
    servers = [one, two]
    try:
        failed = wait_ready(servers)
        ctx.note_servers(servers, failed)
        if one.name in failed:
            raise RuntimeError(f"{one.name}: {failed[one.name]}")
        direct = one.info["workers"][0]
        cpu_one = {"cluster": (one, None), "worker": (one, WORKER_MATCH)}

        def via(key: str, cluster: Server, system: str, model: str, c: int, target: str | None = None) -> Point:
            routed = target is None
            return Point(
                key=key,
                section="router",
                system=system,
                model=model,
                label=f"c{c}",
                server=cluster,
                target=cluster.address if routed else target,
                api_key=cluster.info["api_key"] if routed else None,
                concurrency=c,
                cpu=(cpu_one if cluster is one else {"cluster": (cluster, None)})
                if routed
                else {"worker": (cluster, WORKER_MATCH)},
                tags={"workers": len(cluster.info["workers"]), "routed": routed},
            )

        points = []
        for c in (1, 64):
            points.append(via(f"router/direct/digits/c{c}", one, "worker, called directly", "digits", c, direct))
            points.append(via(f"router/router1/digits/c{c}", one, "router → 1 worker", "digits", c))
        if two.name not in failed:
            points.append(via("router/router2/digits/c64", two, "router → 2 workers", "digits", 64))
        points.append(via("router/router1/minilm/c64", one, "router → 1 worker", "minilm", 64))
        if two.name not in failed:
            points.append(via("router/router2/minilm/c64", two, "router → 2 workers", "minilm", 64))
        run_rounds(points, ctx.settings, ctx.points, "router")
        enable_cache(one, "digits")
        cache = via("router/cache/digits/c1", one, "router, cache hit", "digits", 1)
        run_rounds([cache], ctx.settings, ctx.points, "router cache")
    finally:
        stop_all(servers)


# ---------------------------------------------------------------- 5. peers


PEER_SYSTEMS = (
    # key, label, launcher
    ("triton-1", "Triton, 1 instance", "triton", 1),
    ("triton-2", "Triton, 2 instances", "triton", 2),
    ("mlserver-0", "MLServer, parallel_workers 0", "mlserver", 0),
    ("mlserver-1", "MLServer, parallel_workers 1", "mlserver", 1),
)


def phase_peers(ctx: Context) -> None:
    peers = ctx.results["peers"]
    for name, peer in PEERS.items():
        problem = install(peer, ctx.logs, allow_install=not ctx.args.no_install)
        peers[name] = {"status": "ok" if problem is None else "unavailable", "reason": problem}
        if problem is None:
            peers[name]["versions"] = versions(peer)
        else:
            print(f"  {name} unavailable: {problem}", flush=True)
    specs = model_specs(ctx.source, SERVED)
    worker = launch_worker("shunter-worker", ctx.repo_on, SERVED, ctx.logs)
    cluster = launch_cluster("shunter-cluster", ctx.repo_on, SERVED, 1, ctx.logs)
    systems: list[tuple[str, str, Server]] = [
        ("shunter-worker", "Shunter worker", worker),
        ("shunter-router", "Shunter router → 1 worker", cluster),
    ]
    for key, label, peer, count in PEER_SYSTEMS:
        if peers[peer]["status"] != "ok":
            continue
        launcher: Callable[..., Server] = launch_triton if peer == "triton" else launch_mlserver
        systems.append((key, label, launcher(key, specs, count, ctx.work, ctx.logs)))
    servers = [server for _, _, server in systems]
    try:
        failed = wait_ready(servers, timeout_s=600)
        ctx.note_servers(servers, failed)
        ctx.results["peer_systems"] = {
            key: {"label": label, "server": server.name, "error": failed.get(server.name)}
            for key, label, server in systems
        }
        for name in failed:
            print(f"  {name} did not start: {failed[name].splitlines()[0]}", flush=True)
        loads = [("digits", c) for c in ctx.concurrencies] + [("minilm", 64)]
        points = []
        for key, label, server in systems:
            if server.name in failed:
                continue
            api_key = server.info.get("api_key")
            for model, c in loads:
                points.append(
                    Point(
                        key=f"peers/{key}/{model}/c{c}",
                        section="peers",
                        system=label,
                        model=model,
                        label=f"c{c}",
                        server=server,
                        target=server.address,
                        api_key=api_key,
                        concurrency=c,
                        cpu={"server": (server, None)},
                        tags={"system": key},
                    )
                )
        run_rounds(points, ctx.settings, ctx.points, "peers")
    finally:
        stop_all(servers)


# ---------------------------------------------------------------- main


PHASES: dict[str, Callable[[Context], None]] = {
    "engine": phase_engine,
    "worker": phase_worker,
    "router": phase_router,
    "peers": phase_peers,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench/report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 run, short points, fewer of them; writes under bench-results/report-quick/",
    )
    parser.add_argument("--runs", type=int, help="interleaved runs per figure (default 3; 1 with --quick)")
    parser.add_argument("--duration", type=float, help="measured seconds per point (default 4; 1.5 with --quick)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per point (default 1; 0.3 with --quick)")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)"
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=None,
        help="load generator processes (default: a quarter of the CPUs, at least 1)",
    )
    parser.add_argument("--no-install", action="store_true", help="use the peers' venvs as they are; never pip")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "examples" / "models")
    parser.add_argument("--output", type=Path, help="the markdown file (default BENCHMARKS.md)")
    parser.add_argument("--plots-dir", type=Path, help="PNGs and results.json (default docs/benchmarks/)")
    parser.add_argument(
        "--render", type=Path, metavar="RESULTS_JSON", help="measure nothing: rewrite the outputs from a results.json"
    )
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    quick_dir = ROOT / "bench-results" / "report-quick"
    args.output = args.output or (quick_dir / "BENCHMARKS.md" if args.quick else ROOT / "BENCHMARKS.md")
    args.plots_dir = args.plots_dir or (quick_dir if args.quick else ROOT / "docs" / "benchmarks")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.render:
        from report_render import write_outputs

        paths = write_outputs(json.loads(args.render.read_text()), args.output, args.plots_dir, ROOT)
        print(f"wrote {', '.join(_rel(p) for p in paths)}")
        return 0
    if not all((args.model_repository / m / v).is_dir() for m, v in SERVED.items()):
        print(f"no example models in {args.model_repository}; run .venv/bin/python scripts/build_examples.py")
        return 2
    settings = Settings(
        runs=args.runs or (1 if args.quick else 3),
        duration_s=args.duration or (1.5 if args.quick else 4.0),
        warmup_s=args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0),
        # The client shares the machine with the servers: on a small box one client process
        # (it sends pre-serialized bytes) leaves the cores to the server under test.
        client_processes=args.client_processes or max(1, (os.cpu_count() or 1) // 4),
    )
    sections = [s for s in SECTIONS if s in args.sections.split(",")]
    started_wall, started = time.time(), time.monotonic()
    results: dict[str, Any] = {
        "meta": machine(ROOT),
        "settings": {**settings.__dict__, "quick": args.quick, "sections": sections, "served_versions": SERVED},
        "engine": {},
        "points": {},
        "capacity": {},
        "peers": {},
        "servers": {},
        "errors": {},
    }
    results["meta"]["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started_wall))
    warning = busy_warning(results["meta"]["load_at_start"])
    print(
        f"report: sections {', '.join(sections)}; {settings.runs} run(s) of {settings.duration_s:g} s per point "
        f"(+{settings.warmup_s:g} s warm-up), {settings.client_processes} client process(es), "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    if warning:
        print(f"  note: {warning}", flush=True)
    scratch_root = ROOT / "bench-results"
    scratch_root.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="report-", dir=scratch_root))
    try:
        ctx = Context(args, settings, work, results)
        for section in sections:
            print(f"\n== {section} ==", flush=True)
            section_started = time.monotonic()
            try:
                PHASES[section](ctx)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                results["errors"][section] = f"{type(exc).__name__}: {exc}"
                print(f"  section {section} failed: {exc}\n{traceback.format_exc()}", flush=True)
            print(f"  ({section}: {time.monotonic() - section_started:.0f} s)", flush=True)
    finally:
        results["meta"]["load_at_end"] = list(os.getloadavg())
        results["meta"]["took_s"] = round(time.monotonic() - started)
        keep_logs = work / "logs"
        if keep_logs.is_dir():
            target = scratch_root / "report-logs"
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(keep_logs), target)
        shutil.rmtree(work, ignore_errors=True)
    from report_render import write_outputs

    paths = write_outputs(results, args.output, args.plots_dir, ROOT)
    print(
        f"\nwrote {', '.join(_rel(p) for p in paths)}; logs in {_rel(scratch_root / 'report-logs')}; "
        f"took {results['meta']['took_s']} s",
        flush=True,
    )
    return 0


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    sys.exit(main())
