#!/usr/bin/env python
"""The benchmark runner: walks one profile of matrix.yaml, writes one results JSON, renders it.

    scripts/bench/report                      # profile full: BENCHMARKS.md, docs/benchmarks/
    scripts/bench/report --quick              # profile quick: bench-results/report-quick/
    .venv/bin/python scripts/bench/run.py --profile gpu --device cuda --out $OUT   # the device
    .venv/bin/python scripts/bench/run.py --render docs/benchmarks/results.json   # no measuring

Sections, each figure the median of the profile's interleaved runs: engine (each engine
in-process, one thread, rows/s by batch size), worker (server configurations at closed-loop
concurrencies, the serving-overhead point, open loop at fractions of the measured
capacity), router (the hop, 1 vs 2 workers, a cache hit), peers (Triton and MLServer
beside Shunter, same ONNX files, same `shunter bench`), and limit: the engine in-process
with as many threads as the served configuration runs instances, at the batch the worker
formed in the points the bars compare with it (ModelStatistics inference_count /
execution_count). Load is `shunter bench --json`, one process per point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import matrix as matrix_file  # noqa: E402
import servers as srv  # noqa: E402
from render import kept_up, median, write_outputs  # noqa: E402

from services.common.model_config import load_version_config, version_config_text  # noqa: E402

SECTIONS = ("engine", "worker", "router", "peers")
#: A cluster's worker processes (`python -m services.cli.main worker ...`), for their CPU alone.
WORKER_MATCH = "main worker"
#: A cluster's router process, for the front door's CPU per request (issue 15 §3).
ROUTER_MATCH = "main router"
#: Packages whose versions a run records.
PACKAGES = ("grpcio", "protobuf", "numpy", "onnxruntime", "torch", "uvloop", "tokenizers")


class Run:
    """One walk of a profile: its settings, scratch space, servers and the results so far."""

    def __init__(self, args: argparse.Namespace, matrix: dict[str, Any], profile: dict[str, Any]) -> None:
        self.args, self.matrix, self.profile = args, matrix, profile
        self.runs = args.runs or profile["runs"]
        self.duration = args.duration or profile["duration_s"]
        self.warmup = profile["warmup_s"] if args.warmup is None else args.warmup
        self.clients = args.client_processes or profile.get("client_processes") or max(1, (os.cpu_count() or 1) // 4)
        #: Seconds a server gets to drain when stopped; short once a TERM asked the run to end.
        self.grace_s = 40.0
        self.deadline = time.monotonic() + (args.budget_s or profile.get("budget_s") or 1e9)
        self.scratch = Path(tempfile.mkdtemp(prefix="bench-", dir=ROOT / "bench-results"))
        self.logs = Path(args.out or ROOT / "bench-results") / "logs"
        self.source = Path(args.model_repository or ROOT / profile["repository"])
        self.models: dict[str, str] = profile["models"]
        self.results: dict[str, Any] = {
            "format": 2,
            "profile": args.profile,
            "meta": machine(),
            "settings": {
                "runs": self.runs,
                "duration_s": self.duration,
                "warmup_s": self.warmup,
                "client_processes": self.clients,
                "quick": args.profile == "quick",
                "served_versions": self.models,
                "device": args.device,
            },
            **{key: {} for key in ("engine", "limit", "points", "peers", "systems", "servers", "errors")},
            "skipped": [],
        }

    def interrupt(self) -> None:
        """SIGTERM (the device's `timeout`): stop the servers fast and write what was measured."""
        self.grace_s = 2.0
        raise KeyboardInterrupt

    # ---------------------------------------------------------------- points

    def point(self, key: str, server: srv.Server, model: str, label: str, **load: Any) -> dict[str, Any]:
        """A point's record (created once); ``load``: concurrency, rate, rows, api_key, cpu, tags, target."""
        record = self.results["points"].setdefault(
            key,
            {
                "section": key.split("/")[0],
                "system": load.pop("system"),
                "model": model,
                "label": label,
                "concurrency": None if load.get("rate") else load.get("concurrency", 1),
                "rate": load.get("rate"),
                "batch_rows": load.get("rows", 1),
                "tags": load.pop("tags", {}),
                "runs": [],
            },
        )
        record["_load"] = {"server": server, **load}
        return record

    def measure(self, key: str) -> dict[str, Any]:
        """One `shunter bench --json` call for a point; its figures, or {"error": why}."""
        record = self.results["points"][key]
        load = record["_load"]
        server: srv.Server = load["server"]
        if not server.alive():
            return {"error": f"{server.name} is no longer running (exit code {server.proc.returncode})"}
        cpu = load.get("cpu", {})
        clients = load.get("clients") or self.clients
        clients = clients if load.get("rate") else max(1, min(clients, load.get("concurrency", 1)))
        argv = srv.shunter("bench", "--target", load.get("target", server.address), "--model", record["model"])
        argv += ["--duration", str(self.duration), "--warmup", str(self.warmup), "--processes", str(clients)]
        argv += ["--batch-rows", str(record["batch_rows"]), "--timeout", "30", "--json"]
        argv += (
            ["--rate", str(load["rate"])] if load.get("rate") else ["--concurrency", str(load.get("concurrency", 1))]
        )
        if load.get("api_key"):
            argv += ["--api-key", load["api_key"]]
        argv += ["--stream"] if load.get("stream") else []
        stats = load.get("stats")
        before_stats = srv.model_statistics(server, record["model"]) if stats else None
        before_loop = srv.main_thread_schedstat(server) if stats else None
        before = {name: server.cpu_seconds(match) for name, match in cpu.items()}
        client_before, started = _children_cpu(), time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=self.duration * 4 + 120, check=False)
        wall = time.monotonic() - started
        if done.returncode != 0:
            return {"error": (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}")[-1500:]}
        report = json.loads(done.stdout.strip().splitlines()[-1])
        latency = report.get("latency_ms") or {}
        run: dict[str, Any] = {
            "rows_per_s": report["rows_per_s"],
            "throughput_rps": report["throughput_rps"],
            **{k: latency.get(k) for k in ("p50", "p90", "p95", "p99", "mean")},
            "requests": report["requests"],
            "duration_s": report["duration_s"],
            "codes": report["codes"],
            "client_cpu": (_children_cpu() - client_before) / wall,
        }
        if not report["codes"].get("OK"):
            run["error"] = f"no call succeeded: {report['codes']}"
        if load.get("rate"):
            run["unsent"] = report.get("unsent", 0)
            run["send_lag_p99_ms"] = (report.get("send_lag_ms") or {}).get("p99")
        sent = report["throughput_rps"] * (self.warmup + report["duration_s"])
        if sent > 0 and cpu:
            run["cpu_ms_per_request"] = {n: 1000 * (server.cpu_seconds(m) - before[n]) / sent for n, m in cpu.items()}
        after_stats = srv.model_statistics(server, record["model"]) if before_stats else None
        if before_stats and after_stats and after_stats["executions"] > before_stats["executions"]:
            delta = {k: after_stats[k] - before_stats[k] for k in after_stats}
            run["inferences"], run["executions"] = delta["inferences"], delta["executions"]
            # Where the callers' requests were, on average over the loaded window (Little's law
            # over the worker's own counters, so no sampling): inside its handler, of those in
            # the batcher's queue and executing; the rest wait in gRPC, the transport or the client.
            window = self.warmup + report["duration_s"]
            run["in_handler"] = delta["handler_ns"] / 1e9 / window
            run["in_queue"] = delta["queue_ns"] / 1e9 / window
            run["executing"] = delta["compute_ns"] / 1e9 / window
        after_loop = srv.main_thread_schedstat(server) if before_loop else None
        if before_loop and after_loop:
            # The event loop's thread: the share of the window it ran, and waited for a CPU.
            run["loop_on_cpu"] = (after_loop[0] - before_loop[0]) / wall
            run["loop_waiting"] = (after_loop[1] - before_loop[1]) / wall
        return run

    def rounds(self, keys: list[str], title: str, runs: int | None = None) -> None:
        """Every point ``runs`` times, interleaved, each round starting one point further along,
        so slow drift on a shared machine spreads over every system; within the time box."""
        runs = runs or self.runs
        took: dict[str, float] = {}
        for index in range(runs):
            shift = index % max(1, len(keys))
            for n, key in enumerate(keys[shift:] + keys[:shift]):
                cost = took.get(key, self.warmup + self.duration + 2.5)
                if time.monotonic() + cost + 15 > self.deadline:
                    self.results["skipped"].append(f"{key} run {index + 1}")
                    continue
                started = time.monotonic()
                run = self.measure(key)
                took[key] = time.monotonic() - started
                record = self.results["points"][key]
                record["runs"].append(run)
                print(
                    f"  [{title} {index + 1}/{runs}, {n + 1}/{len(keys)}] {record['system']}, "
                    f"{record['model']} {record['label']}: {describe(run)}",
                    flush=True,
                )

    # ---------------------------------------------------------------- repositories

    def repository(self, name: str, batching: bool) -> Path:
        """The served version of each model as the model's config (batching kept or dropped),
        so a request without a version, and `shunter up`'s production version, get that one."""
        dest = self.scratch / f"repo-{name}"
        if dest.exists():
            return dest
        for model, version in self.models.items():
            text, _ = version_config_text(self.source / model, version)
            config = yaml.safe_load(text)
            if not batching:
                config.pop("dynamic_batching", None)
            (dest / model).mkdir(parents=True)
            (dest / model / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            for entry in (self.source / model).iterdir():
                if entry.name == "config.yaml" or (entry.is_dir() and entry.name.isdigit() and entry.name != version):
                    continue
                if entry.is_dir():
                    ignore = shutil.ignore_patterns("config.yaml")
                    shutil.copytree(entry, dest / model / entry.name, copy_function=_link, ignore=ignore)
                else:
                    _link(entry, dest / model / entry.name)
        return dest

    def instances(self, model: str) -> int:
        return load_version_config(self.source / model, self.models[model]).instances

    # ---------------------------------------------------------------- sections

    def engine(self) -> None:
        engines = self.profile.get("engines", [])
        for index in range(self.runs):
            shift = index % max(1, len(engines))
            for name in engines[shift:] + engines[:shift]:
                model, version = name.split("/")
                entry = self.results["engine"].setdefault(f"{model}/v{version}", {"model": model, "version": version})
                data = self.probe(model, version, 1, None, self.profile["engine_seconds"])
                if "error" in data:
                    entry.setdefault("errors", []).append(data["error"])
                    print(f"  engine {name}: FAILED\n{data['error'][-800:]}", flush=True)
                    continue
                entry["backend"] = data["backend"]
                entry.setdefault("runs", []).append(data["rows_per_s"])
                cells = ", ".join(f"b{b} {v:,.0f}" for b, v in data["rows_per_s"].items())
                print(f"  [engine {index + 1}/{self.runs}] {name} ({data['backend']}): {cells} rows/s", flush=True)

    def probe(self, model: str, version: str, threads: int, batches: list[int] | None, seconds: float) -> dict:
        """The engine in-process, in a fresh interpreter (only its own library loaded)."""
        argv = [sys.executable, __file__, "--engine-probe", f"{model}/{version}", "--threads", str(threads)]
        argv += ["--model-repository", str(self.source), "--seconds", str(seconds)]
        argv += ["--batches", ",".join(map(str, batches))] if batches else []
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            return {"error": done.stderr.strip()[-2000:]}
        return json.loads(done.stdout.strip().splitlines()[-1])

    def best_batch(self, model: str) -> int:
        """The batch at which the served engine does the most rows/s (else its max batch)."""
        runs = self.results["engine"].get(f"{model}/v{self.models[model]}", {}).get("runs")
        if runs:
            medians = {b: sorted(r[b] for r in runs if b in r)[len(runs) // 2] for b in runs[0]}
            return int(max(medians, key=medians.__getitem__))
        return load_version_config(self.source / model, self.models[model]).max_batch_size or 1

    def worker(self) -> None:
        spec = self.profile["worker"]
        # Only the configurations some point uses: a GPU profile's 8-process worker is not started for nothing.
        used = {n for n in spec["configs"] if spec.get("concurrencies")} | {p[1] for p in spec.get("points", [])}
        used |= {spec[k]["config"] for k in ("overhead", "open_loop") if k in spec}
        configs = {n: c for n, c in spec["configs"].items() if n in used}
        workers = {
            name: srv.launch_worker(
                f"worker-{name}", self.repository(name, c["batching"]), self.models, self.logs, c.get("processes", 1)
            )
            for name, c in configs.items()
        }
        try:
            self.ready(list(workers.values()))

            def add(model: str, name: str, label: str, key: str | None = None, **load: Any) -> str:
                config = configs[name]
                processes = config.get("processes", 1)
                load.setdefault("concurrency", 1)
                key = key or f"worker/{name}/{model}/c{load['concurrency']}" + (
                    f"x{load['rows']}" if load.get("rows", 1) > 1 else ""
                )
                tags = {"batching": name, "mode": "on" if config["batching"] else "off", "processes": processes}
                tags |= load.pop("tags", {})
                record = self.point(
                    key,
                    workers[name],
                    model,
                    label,
                    system=f"worker, batching {name}",
                    cpu={"worker": None},
                    stats=processes == 1 and config["batching"],
                    clients=config.get("clients"),
                    tags=tags,
                    **load,
                )
                record["engine_threads"] = self.instances(model) * processes
                return key

            keys = [
                add(m, n, f"c{c}", concurrency=c)
                for m in self.models
                for n in configs
                for c in spec.get("concurrencies", [])
            ]
            if "overhead" in spec:
                over = spec["overhead"]
                for model in self.models:
                    rows = self.best_batch(model) if over["rows"] == "best" else int(over["rows"])
                    keys.append(
                        add(
                            model,
                            over["config"],
                            f"c{over['concurrency']} × {rows} rows",
                            f"worker/{over['config']}/{model}/overhead",
                            concurrency=over["concurrency"],
                            rows=rows,
                        )
                    )
            for model, name, c, rows in spec.get("points", []):
                keys.append(
                    add(model, name, f"c{c}" + (f" × {rows} rows" if rows > 1 else ""), concurrency=c, rows=rows)
                )
            self.rounds(keys, "worker")
            if "open_loop" in spec:
                self.open_loop(spec["open_loop"], add)
        finally:
            srv.stop_all(workers.values(), self.grace_s)

    def open_loop(self, spec: dict[str, Any], add: Any) -> None:
        """Capacity as the open loop sees it (the Poisson client costs more CPU than the closed
        loop, and a batcher is cheapest saturated): offer the closed-loop best, then 95 % of
        what completed, until a rate is kept up; then each fraction of it."""
        name, detail, keys = spec["config"], self.results.setdefault("capacity_detail", {}), []
        for model in self.models:
            rate = max(
                (median(self.results["points"].get(f"worker/{name}/{model}/c{c}"), "throughput_rps") or 0)
                for c in self.profile["worker"].get("concurrencies", [1])
            )
            closed, probes, capacity = rate, [], 0.0
            for attempt in range(spec["probes"]):
                if rate <= 0:
                    break
                key = add(model, name, f"open probe {rate:,.0f}/s", f"worker/{name}/{model}/probe{attempt}", rate=rate)
                self.rounds([key], "open-loop probe", runs=1)
                completed = median(self.results["points"][key], "rows_per_s") or 0.0
                probes.append([rate, completed])
                capacity = rate
                if kept_up(rate, completed, self.duration):
                    break
                rate = capacity = 0.95 * completed
            detail[model] = {"closed_loop": closed, "open_loop": capacity, "probes": probes}
            for fraction in spec["fractions"] if capacity > 0 else []:
                pct = round(fraction * 100)
                key = add(
                    model,
                    name,
                    f"open {pct}%",
                    f"worker/{name}/{model}/open{pct}",
                    rate=fraction * capacity,
                    tags={"fraction": fraction},
                )
                keys.append(key)
        self.rounds(keys, "worker open loop")

    def router(self) -> None:
        spec = self.profile["router"]
        repo = self.repository("on", True)
        clusters = {
            n: srv.launch_cluster(f"cluster-{n}", repo, self.models, w, self.logs) for n, w in spec["clusters"].items()
        }
        relays: dict[str, srv.Server] = {}
        try:
            failed = self.ready(list(clusters.values()), fail=False)
            # The floor of a Python gRPC hop, where the router stands (passthrough_proxy.py).
            for p in spec["points"]:
                cluster = clusters[p["cluster"]]
                if p.get("relay") and cluster.name not in failed and p["cluster"] not in relays:
                    relays[p["cluster"]] = srv.launch_relay(
                        f"relay-{p['cluster']}", cluster.info["workers"][0], cluster.info["admin_key"], [], self.logs
                    )
            failed |= self.ready(list(relays.values()), fail=False)
            keys = []
            for p in spec["points"]:
                cluster = clusters[p["cluster"]]
                relay = relays.get(p["cluster"]) if p.get("relay") else None
                if cluster.name in failed or (p.get("relay") and (relay is None or relay.name in failed)):
                    continue
                direct, stream = p.get("direct", False), p.get("stream", False)
                for c in p["concurrencies"]:
                    key = f"router/{p['name']}/{p['model']}/c{c}"
                    n = len(cluster.info["workers"])
                    if relay:  # the relay's own process stands where the router would
                        system, target, api_key = "bare grpc.aio relay → 1 worker", relay.address, None
                        cpu: dict[str, str | None] = {"router": None}
                    elif direct:  # a cluster worker serves routers and admins only
                        system, target = "worker, called directly", cluster.info["workers"][0]
                        api_key = cluster.info["admin_key"]
                        cpu = {"worker": WORKER_MATCH}
                    else:
                        system = f"router → {n} worker" + "s" * (n > 1)
                        target, api_key = cluster.address, cluster.info["api_key"]
                        cpu = {"cluster": None, "router": ROUTER_MATCH, "worker": WORKER_MATCH}
                    system += ", one stream per connection" if stream else ""
                    self.point(
                        key,
                        relay or cluster,
                        p["model"],
                        f"c{c}",
                        system=system,
                        concurrency=c,
                        target=target,
                        api_key=api_key,
                        cpu=cpu,
                        stream=stream,
                        tags={"workers": n, "routed": not direct, "stream": stream, "relay": bool(relay)},
                    )
                    keys.append(key)
            self.rounds(keys, "router")
            if "cache" in spec and clusters[spec["cache"]["cluster"]].name not in failed:
                cache, cluster = spec["cache"], clusters[spec["cache"]["cluster"]]
                srv.enable_cache(cluster, cache["model"])
                key = f"router/cache/{cache['model']}/c{cache['concurrency']}"
                self.point(
                    key,
                    cluster,
                    cache["model"],
                    f"c{cache['concurrency']}",
                    system="router, cache hit",
                    concurrency=cache["concurrency"],
                    api_key=cluster.info["api_key"],
                    cpu={"cluster": None},
                )
                self.rounds([key], "router cache")
        finally:
            srv.stop_all([*relays.values(), *clusters.values()], self.grace_s)

    def peers(self) -> None:
        spec, peers = self.profile["peers"], self.results["peers"]
        for name, peer in self.matrix["peers"].items():
            problem = srv.install(name, peer, self.logs, allow=not self.args.no_install)
            peers[name] = {"status": "ok" if problem is None else "unavailable", "reason": problem}
            if problem is None:
                peers[name]["versions"] = srv.venv_versions(srv.venv_python(name), peer["versions"])
            else:
                print(f"  {name} unavailable: {problem}", flush=True)
        specs = srv.model_specs(self.source, self.models)
        repo, systems = self.repository("on", True), {}
        for key, system in spec["systems"].items():
            kind = system["kind"]
            if kind in peers and peers[kind]["status"] != "ok":
                continue
            if kind == "worker":
                systems[key] = srv.launch_worker(key, repo, self.models, self.logs)
            elif kind == "cluster":
                systems[key] = srv.launch_cluster(key, repo, self.models, system.get("workers", 1), self.logs)
            elif kind == "triton":
                systems[key] = srv.launch_triton(key, specs, system["instances"], self.scratch, self.logs)
            else:
                systems[key] = srv.launch_mlserver(key, specs, system["parallel_workers"], self.scratch, self.logs)
        try:
            failed = self.ready(list(systems.values()), fail=False, timeout_s=600)
            for key, server in systems.items():
                label, error = spec["systems"][key]["label"], failed.get(server.name)
                self.results["systems"][key] = {"label": label, "server": server.name, "error": error}
            ready = [s for s in systems.values() if s.name not in failed]
            reference = next((s for k, s in systems.items() if spec["systems"][k]["kind"] == "worker"), None)
            if reference in ready:
                others = [s for s in ready if s is not reference]
                self.results["output_check"] = srv.compare_outputs(specs, reference, others)
            keys = []
            for key, server in systems.items():
                for model, concurrencies in spec["loads"].items():
                    for c in concurrencies if server in ready else []:
                        keys.append(f"peers/{key}/{model}/c{c}")
                        self.point(
                            keys[-1],
                            server,
                            model,
                            f"c{c}",
                            system=spec["systems"][key]["label"],
                            concurrency=c,
                            api_key=server.info.get("api_key"),
                            cpu={"server": None},
                            tags={"system": key},
                        )
            self.rounds(keys, "peers")
        finally:
            srv.stop_all(systems.values(), self.grace_s)

    def limits(self) -> None:
        """The engine in-process with the served configuration's threads, at the batches formed."""
        from render import formed_batch

        wanted: dict[tuple[str, int], set[int]] = {}
        for bar in self.matrix["bars"][self.profile["bars"]]:
            if bar["kind"] not in ("limit", "capture"):
                continue
            record = self.results["points"].get(bar["point"])
            batch = formed_batch(record)
            if record is None or batch is None:
                continue
            batches = wanted.setdefault((record["model"], record["engine_threads"]), set())
            batches.add(batch)
            if bar["kind"] == "capture":
                batches.add(1)
        for index in range(self.runs):
            for (model, threads), batches in sorted(wanted.items()):
                if time.monotonic() + 30 > self.deadline:
                    self.results["skipped"].append(f"limit {model} {threads} threads run {index + 1}")
                    continue
                version = self.models[model]
                entry = self.results["limit"].setdefault(
                    f"{model}/v{version}/t{threads}", {"model": model, "version": version, "threads": threads}
                )
                data = self.probe(model, version, threads, sorted(batches), self.profile["engine_seconds"] * 2)
                if "error" in data:
                    entry.setdefault("errors", []).append(data["error"])
                    print(f"  limit {model} ({threads} threads): FAILED\n{data['error'][-800:]}", flush=True)
                    continue
                entry.setdefault("runs", []).append(data["rows_per_s"])
                cells = ", ".join(f"b{b} {v:,.0f}" for b, v in data["rows_per_s"].items())
                print(f"  [limit {index + 1}/{self.runs}] {model}, {threads} thread(s): {cells} rows/s", flush=True)

    def ready(self, servers: list[srv.Server], fail: bool = True, timeout_s: float = 300) -> dict[str, str]:
        failed = srv.wait_ready(servers, timeout_s)
        for server in servers:
            self.results["servers"][server.name] = {
                "address": server.address,
                "metadata": server.metadata,
                "error": failed.get(server.name),
            }
        for name, why in failed.items():
            print(f"  {name} did not start: {why.splitlines()[0]}", flush=True)
        if failed and fail:
            raise RuntimeError("; ".join(f"{n}: {w}" for n, w in failed.items()))
        return failed


def describe(run: dict[str, Any]) -> str:
    if run.get("rows_per_s") is None:
        return f"FAILED: {str(run.get('error')).splitlines()[0][:200]}"
    text = f"{run['rows_per_s']:,.0f} rows/s, p50 {run['p50'] or 0:.2f} ms, p99 {run['p99'] or 0:.2f} ms"
    if run.get("executions"):  # batching on (off: each request is one inference, whatever its rows)
        text += f", batches of {run['inferences'] / run['executions']:.1f} rows"
    for name, value in (run.get("cpu_ms_per_request") or {}).items():
        text += f", {name} CPU {value:.3f} ms/req"
    bad = {k: v for k, v in run["codes"].items() if k != "OK"}
    return text + (f", errors {bad}" if bad else "")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _link(src: Any, dst: Any) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def machine() -> dict[str, Any]:
    """What the run ran on: numbers from a benchmark mean little without the box they came from."""
    import psutil

    def first(path: str, key: str, sep: str, default: str) -> str:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(sep, 1)[1].strip().strip('"')
        return default

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.strip()

    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu_model": first("/proc/cpuinfo", "model name", ":", platform.processor() or "unknown"),
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": first("/etc/os-release", "PRETTY_NAME=", "=", platform.system()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": srv.venv_versions(Path(sys.executable), PACKAGES),
        "git": {
            "commit": os.environ.get("SHUNTER_COMMIT") or git("rev-parse", "--short", "HEAD") or "unknown",
            "modified_files": len(git("status", "--porcelain", "--untracked-files=no").splitlines()),
        },
        "load_at_start": list(os.getloadavg()),
    }


def engine_probe(args: argparse.Namespace) -> dict[str, Any]:
    """rows/s of ``threads`` engines (one per thread, as the worker runs one per instance),
    all called at once in a loop with the inputs `shunter bench` sends, at each batch size."""
    import numpy as np

    from services.bench.payload import InputPlan, make_inputs
    from services.worker.engines import EngineSpec, create_engine

    model, version = args.engine_probe.split("/")
    repo = Path(args.model_repository)
    config = load_version_config(repo / model, version)
    engines = [create_engine(EngineSpec(model, version, repo / model / version, config)) for _ in range(args.threads)]
    for engine in engines:
        engine.load()
        engine.warmup()
    limit = max(config.max_batch_size, 1)
    sizes = [int(b) for b in args.batches.split(",")] if args.batches else [1]
    while not args.batches and sizes[-1] * 2 < limit:
        sizes.append(sizes[-1] * 2)
    if not args.batches and limit > 1:
        sizes.append(limit)
    rows_per_s: dict[int, float] = {}
    for batch in sizes:
        plans = [
            InputPlan(
                t.name,
                t.datatype,
                ((batch,) if config.max_batch_size else ()) + tuple(16 if d == -1 else d for d in t.shape),
            )
            for t in config.inputs
        ]
        inputs = [make_inputs(plans, np.random.default_rng(i)) for i in range(args.threads)]
        for engine, data in zip(engines, inputs, strict=True):
            engine.infer(data)  # the first call at a new shape may allocate
        counts = [0] * args.threads
        start = threading.Barrier(args.threads + 1)
        workers = [
            threading.Thread(target=_spin, args=(engines[i], inputs[i], args.seconds, start, counts, i))
            for i in range(args.threads)
        ]
        for thread in workers:
            thread.start()
        start.wait()
        began = time.perf_counter()
        for thread in workers:
            thread.join()
        rows_per_s[batch] = batch * sum(counts) / (time.perf_counter() - began)
    for engine in engines:
        engine.close()
    return {"model": model, "version": version, "backend": config.backend, "rows_per_s": rows_per_s}


def _spin(engine: Any, inputs: Any, seconds: float, start: threading.Barrier, counts: list[int], index: int) -> None:
    """One engine thread of the probe: start with the others, then call for ``seconds`` (at least 3 calls)."""
    start.wait()
    ends = time.perf_counter() + seconds
    while time.perf_counter() < ends or counts[index] < 3:
        engine.infer(inputs)
        counts[index] += 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench/report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="full", help="a profile of matrix.yaml (default full)")
    parser.add_argument(
        "--quick",
        action="store_const",
        const="quick",
        dest="profile",
        help="smoke run (profile quick): 1 short run per point, under bench-results/report-quick/",
    )
    parser.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--runs", type=int, help="interleaved runs per figure (default: the profile's)")
    parser.add_argument("--duration", type=float, help="measured seconds per point (default: the profile's)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per point (default: the profile's)")
    parser.add_argument("--client-processes", type=int, help="load generator processes (default a quarter of the CPUs)")
    parser.add_argument("--budget-s", type=float, help="time box: points that no longer fit are skipped and listed")
    parser.add_argument("--no-install", action="store_true", help="use the peers' venvs as they are; never pip")
    parser.add_argument("--model-repository", help="where the models are (default: the profile's repository)")
    parser.add_argument("--device", help="gpu profiles: the device every model config names (cuda, cpu)")
    parser.add_argument("--out", help="gpu profiles: the output folder (default: the profile's plots_dir)")
    parser.add_argument("--matrix", type=Path, default=matrix_file.MATRIX, help="the matrix (default matrix.yaml)")
    parser.add_argument("--output", type=Path, help="the markdown file (default: the profile's output)")
    parser.add_argument("--plots-dir", type=Path, help="PNGs and the results JSON (default: the profile's)")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON", help="measure nothing: re-render its outputs")
    parser.add_argument("--write-carry", type=Path, metavar="DIR", help="gpu_prepare's step: MiniLM fp16 into DIR")
    parser.add_argument("--engine-probe", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batches", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.5, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.engine_probe:
        print(json.dumps(engine_probe(args)))
        return 0
    if args.write_carry:
        import gpu_models

        gpu_models.write_carry(args.write_carry)
        return 0
    try:
        matrix, profile = matrix_file.load(args.matrix, args.profile)
        if args.render:
            results = json.loads(args.render.read_text())
            profile = matrix_file.resolve(matrix, results.get("profile") or args.profile)
    except matrix_file.MatrixError as exc:
        print(f"{args.matrix.name}: {exc}", file=sys.stderr)
        return 2
    assert profile is not None
    output = args.output or Path(args.out or ROOT) / (Path(profile["output"]).name if args.out else profile["output"])
    plots = args.plots_dir or Path(args.out or ROOT / profile["plots_dir"])
    if args.render:
        paths = write_outputs(results, matrix, profile, output, plots)
        print(f"wrote {', '.join(map(str, paths))}")
        return 0
    (ROOT / "bench-results").mkdir(exist_ok=True)
    run = Run(args, matrix, profile)
    sections = [
        s
        for s in SECTIONS
        if s in (args.sections or ",".join(SECTIONS)).split(",")
        and (profile.get(s) or (s == "engine" and profile.get("engines")))
    ]
    print(
        f"bench: profile {args.profile}, sections {', '.join(sections)}; {run.runs} run(s) of {run.duration:g} s "
        f"per point (+{run.warmup:g} s warm-up), {run.clients} client process(es), {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: run.interrupt())
    started = time.monotonic()
    try:
        if profile["repository"] == "gpu":
            import gpu_models

            run.source = run.scratch / "gpu-models"
            run.results["verify"] = gpu_models.build_and_verify(
                ROOT / ".gpu-carry", run.source, args.device or "cuda", run.results["meta"]
            )
        for section in [*sections, "limit"]:
            print(f"\n== {section} ==", flush=True)
            try:
                getattr(run, "limits" if section == "limit" else section)()
            except Exception as exc:
                run.results["errors"][section] = f"{type(exc).__name__}: {exc}"
                print(f"  section {section} failed: {exc}\n{traceback.format_exc()}", flush=True)
    except KeyboardInterrupt:
        run.results["errors"]["run"] = "interrupted: the figures below are what was measured until then"
    finally:
        run.results["meta"]["load_at_end"] = list(os.getloadavg())
        run.results["meta"]["took_s"] = round(time.monotonic() - started)
        for record in run.results["points"].values():
            record.pop("_load", None)
        shutil.rmtree(run.scratch, ignore_errors=True)
    paths = write_outputs(run.results, matrix, profile, output, plots)
    print(f"\nwrote {', '.join(map(str, paths))}; logs in {run.logs}; took {run.results['meta']['took_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
