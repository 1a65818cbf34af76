"""The report's sections as phases: which servers each starts, and which points it measures.

Each phase starts the servers it needs (all at once, then waits for all), measures its
points in interleaved rounds (report_measure.run_rounds) and stops the servers, even
when a measurement fails. Every system serves the ONNX versions of the examples
(``SERVED``), so Shunter, Triton and MLServer all run the same graph files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from report_measure import Point, Settings, kept_up, median, run_rounds
from report_peers import (
    PEERS,
    compare_outputs,
    install,
    launch_mlserver,
    launch_triton,
    model_specs,
    versions,
)
from report_servers import (
    Server,
    enable_cache,
    launch_cluster,
    launch_worker,
    stop_all,
    wait_ready,
)

from services.common.model_config import version_config_text

#: The version of each model every system serves: the ONNX file, so all run the same graph.
SERVED = {"digits": "2", "minilm": "1"}
#: Engines measured in-process (section 1): every digits backend, and minilm.
ENGINES_FULL = (("digits", "1"), ("digits", "2"), ("digits", "3"), ("minilm", "1"))
ENGINES_QUICK = (("digits", "2"), ("minilm", "1"))
SECTIONS = ("engine", "worker", "router", "peers")
#: Concurrency of the serving-overhead point: enough requests that the engine never waits.
OVERHEAD_CONCURRENCY = 4
OPEN_LOOP_FRACTIONS = (0.5, 0.9)
#: Open-loop rates tried, downwards from the closed-loop best, to find the capacity.
OPEN_LOOP_PROBES = 3
WORKER_MATCH = "main worker"  # a cluster's worker processes: `python -m services.cli.main worker ...`


class Context:
    """What every phase needs: settings, paths, and the results being filled in."""

    def __init__(self, args: argparse.Namespace, settings: Settings, work: Path, logs: Path, results: dict[str, Any]):
        self.args = args
        self.settings = settings
        self.work = work
        self.logs = logs
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
        closed = {
            model: max(
                (median(ctx.points.get(f"worker/on/{model}/c{c}"), "throughput_rps") or 0) for c in ctx.concurrencies
            )
            for model in SERVED
        }
        # The Poisson client costs more CPU per call than the closed loop, on the same cores, and
        # a batcher is cheapest per request when saturated: offered the closed-loop best, an open
        # loop may fall behind. Probe downwards until a rate is kept up (at most three probes).
        capacity_of = {}
        for model, rate in closed.items():
            capacity_of[model] = _open_loop_capacity(ctx, on, model, rate)
        open_points = []
        for model in SERVED:
            capacity, probes = capacity_of[model]
            ctx.results["capacity"][model] = capacity
            detail = {"closed_loop": closed[model], "open_loop": capacity, "probes": probes}
            ctx.results.setdefault("capacity_detail", {})[model] = detail
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


def _open_loop_capacity(ctx: Context, server: Server, model: str, rate: float) -> tuple[float, list[list[float]]]:
    """The highest probed open-loop rate the worker kept up with, and the probes as (offered, completed)."""
    probes: list[list[float]] = []
    single = replace(ctx.settings, runs=1)
    for attempt in range(OPEN_LOOP_PROBES):
        if rate <= 0:
            break
        point = _worker_point(f"worker/on/{model}/probe{attempt}", server, "on", model, f"open probe {rate:,.0f}/s")
        point.rate = rate
        run_rounds([point], single, ctx.points, "worker open-loop probe")
        completed = median(ctx.points.get(point.key), "rows_per_s") or 0.0
        probes.append([rate, completed])
        if kept_up(rate, completed, ctx.settings.duration_s):
            return rate, probes
        rate = 0.95 * completed  # what it did complete, with some room
    return (rate if probes else 0.0), probes


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
                # A cluster worker serves routers and admins only.
                api_key=cluster.info["api_key"] if routed else cluster.info["admin_key"],
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


#: key, label, peer, instances (Triton) or parallel_workers (MLServer).
PEER_SYSTEMS = (
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
        for name, why in failed.items():
            if "_recursion_count" in why or "_thread.RLock" in why:
                failed[name] = (
                    "Triton's Python stub loaded a libpython other than the one of the Python its venv was made "
                    "from (LD_LIBRARY_PATH must start with that Python's LIBDIR; report_peers.triton_env sets "
                    f"it):\n{why}"
                )
        ctx.note_servers(servers, failed)
        ctx.results["peer_systems"] = {
            key: {"label": label, "server": server.name, "error": failed.get(server.name)}
            for key, label, server in systems
        }
        for name in failed:
            print(f"  {name} did not start: {failed[name].splitlines()[0]}", flush=True)
        ready = [server for _, _, server in systems if server.name not in failed]
        if worker in ready:
            others = [server for server in ready if server is not worker]
            ctx.results["output_check"] = compare_outputs(specs, worker, others)
            for name, verdict in ctx.results["output_check"].items():
                print(f"  outputs of {name} vs the Shunter worker: {verdict}", flush=True)
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
