#!/usr/bin/env python3
"""Throughput cost of model monitoring: a model with and without a ``monitoring:`` block.

Starts a private redis-server, a registry and one worker in cluster mode serving two
copies of one example model (``--model digits``, the default, or ``minilm``) that differ
only in monitoring: ``MODEL`` (output metrics, plus drift counting against a reference
profile: digits' training split, or a few hundred sentences for minilm) and
``MODELplain`` (no monitoring block). Then runs ``shunter bench`` closed-loop at ``--concurrency`` (default 64) against
the worker, alternating plain / monitored (ABBA) for ``--rounds`` rounds so a change in
machine load hits both, and prints each run's requests/s and the median cost. On a shared
machine throughput swings with the neighbours' load, so it also prints the worker
process's CPU time per 1000 requests and its monitor thread's share of it (Linux /proc),
which those swings move much less.

  .venv/bin/python scripts/bench/monitoring_cost.py [--model digits|minilm] [--duration 5] [--rounds 2]
                                                    [--concurrency 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import servers as srv
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from services.bench.payload import SENTENCES  # noqa: E402
from services.common.model_config import version_config_text  # noqa: E402
from tests.support import digits_eval  # noqa: E402
from tests.support.processes import start_redis, start_service  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="plain/monitored pairs (default 2)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--model", choices=("digits", "minilm"), default="digits")
    control = "A/A run: neither copy monitored, to see the noise floor of this machine"
    parser.add_argument("--control", action="store_true", help=control)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    subprocess.run([sys.executable, "scripts/build_examples.py"], cwd=ROOT, check=True, capture_output=True)
    name = args.model
    model_dir = ROOT / "examples" / "models" / name
    number = "2" if name == "digits" else "1"
    plain_name = f"{name}plain"
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if name == "digits":
            _, reference = digits_eval.write(tmp / "sets")
        else:
            reference = tmp / "sentences.jsonl"
            rng = random.Random(0)
            reference.write_text("".join(json.dumps({"TEXT": rng.choice(SENTENCES)}) + "\n" for _ in range(400)))
        key = f"adm-{secrets.token_urlsafe(24)}"
        (tmp / "admin.key").write_text(key)
        redis = start_redis()
        services = []
        try:
            registry = start_service(
                ["registry", "--redis-url", redis.url, "--port", "0", "--admin-key-file", str(tmp / "admin.key")]
            )
            services.append(registry)
            env = {**os.environ, "SHUNTER_REGISTRY": registry.address, "SHUNTER_ADMIN_KEY": key}
            text, _ = version_config_text(model_dir, number)
            monitored = yaml.safe_load(text)
            plain = {k: v for k, v in monitored.items() if k != "monitoring"}
            first = (name, plain, []) if args.control else (name, monitored, ["--reference", str(reference)])
            for registered, config, extra in (first, (plain_name, plain, [])):
                path = tmp / f"{registered}.yaml"
                path.write_text(yaml.safe_dump(config))
                artifact = ("--version", number, "--artifact", str(model_dir / number), "--config", str(path))
                argv = srv.shunter("models", "register", registered, *artifact, "--state", "production", *extra)
                subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True)
            trusted = ("--trusted-repository", str(ROOT / "examples" / "models"))
            serve = f"worker --serve {name},{plain_name} --port 0 --admin-key {key}".split()
            worker = start_service([*serve, "--registry", registry.address, *trusted])
            services.append(worker)
            if not args.control:
                _wait_for_profile(worker)
            runs: dict[str, list[float]] = {plain_name: [], name: []}
            cpu: dict[str, list[float]] = {plain_name: [], name: []}
            monitor_cpu: list[float] = []
            load = ("--concurrency", str(args.concurrency), "--duration", str(args.duration), "--json")
            # A cluster worker serves inference to router and admin keys only.
            bench_env = {**env, "SHUNTER_API_KEY": key}
            for model in srv.abba(list(runs), args.rounds):
                before, monitor_before = _cpu_s(worker.proc.pid), _monitor_cpu_s(worker.proc.pid)
                argv = srv.shunter(
                    "bench", "--target", worker.address, "--model", model, "--model-version", number, *load
                )
                done = subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, text=True, env=bench_env)
                report = json.loads(done.stdout.strip().splitlines()[-1])
                assert report["codes"] == {"OK": report["requests"]}, report["codes"]
                runs[model].append(report["throughput_rps"])
                # Includes the warm-up's calls: count them at the measured rate.
                calls = report["requests"] * (1 + 0.5 / args.duration)
                cpu[model].append(1000 * (_cpu_s(worker.proc.pid) - before) / calls)
                if model == name:
                    monitor_cpu.append(1000 * (_monitor_cpu_s(worker.proc.pid) - monitor_before) / calls)
            metrics = urllib.request.urlopen(worker.metrics_url, timeout=10).read().decode()
            lines = [line for line in metrics.splitlines() if line.startswith("shunter_monitor_dropped_batches_total{")]
            dropped = sum(float(line.rsplit(" ", 1)[1]) for line in lines)
        finally:
            for service in reversed(services):
                service.terminate()
            redis.kill()
    off, on = statistics.median(runs[plain_name]), statistics.median(runs[name])
    cpu_off, cpu_on = statistics.median(cpu[plain_name]), statistics.median(cpu[name])
    result = {
        "model": name,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "plain_rps": runs[plain_name],
        "monitored_rps": runs[name],
        "cost_percent": round(100 * (1 - on / off), 2),
        "plain_cpu_s_per_1000": cpu[plain_name],
        "monitored_cpu_s_per_1000": cpu[name],
        "cpu_cost_percent": round(100 * (cpu_on / cpu_off - 1), 2),
        "monitor_thread_cpu_s_per_1000": monitor_cpu,
        "monitor_thread_share_percent": round(100 * statistics.median(monitor_cpu) / cpu_on, 2),
        "control": args.control,
        "dropped_batches": dropped,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps(result))
        return 0
    control = " (A/A control: neither copy monitored)" if args.control else ""
    print(f"{name}{control}, {args.concurrency} in flight, {args.duration:g} s x {args.rounds} rounds, ", end="")
    print(f"{os.cpu_count()} CPUs")
    print(f"  plain:      {', '.join(f'{r:.0f}' for r in runs[plain_name])} req/s (median {off:.0f})")
    print(f"  monitored:  {', '.join(f'{r:.0f}' for r in runs[name])} req/s (median {on:.0f})")
    print(f"  cost:       {result['cost_percent']:.1f} % of throughput; {dropped:.0f} batches not monitored")
    print(f"  worker CPU: plain {cpu_off:.3f} s, monitored {cpu_on:.3f} s per 1000 requests ", end="")
    print(f"({result['cpu_cost_percent']:+.1f} %); load average {result['load_average']:.1f}")
    print(f"  monitor thread: {statistics.median(monitor_cpu) * 1000:.1f} ms CPU per 1000 requests, ", end="")
    print(f"{result['monitor_thread_share_percent']:.1f} % of the monitored worker's CPU")
    return 0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _monitor_cpu_s(pid: int) -> float:
    """CPU seconds of the worker's monitor thread (named by services/monitoring/observer.py)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == "shunter-monitor":
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return 0.0


def _wait_for_profile(worker) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(worker.metrics_url, timeout=10).read().decode()
        if any(line.startswith("shunter_monitor_profile{") for line in text.splitlines()):
            return
        time.sleep(0.2)
    raise SystemExit("the worker never fetched the reference profile")


if __name__ == "__main__":
    raise SystemExit(main())
