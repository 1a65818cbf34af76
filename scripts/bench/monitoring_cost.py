#!/usr/bin/env python3
"""Throughput cost of model monitoring: digits with and without a ``monitoring:`` block.

Starts a private redis-server, a registry and one worker in cluster mode serving two
models that differ only in monitoring: ``digits`` (output metrics, plus drift counting
against the training split's reference profile) and ``digitsplain`` (no monitoring
block). Then runs ``shunter bench`` closed-loop at ``--concurrency`` (default 64) against
the worker, alternating plain / monitored (ABBA) for ``--rounds`` rounds so a change in
machine load hits both, and prints each run's requests/s and the median cost. On a shared
machine throughput swings with the neighbours' load, so it also prints the worker
process's CPU time per 1000 requests and its monitor thread's share of it (Linux /proc),
which those swings move much less.

  .venv/bin/python scripts/bench/monitoring_cost.py [--duration 5] [--rounds 2] [--concurrency 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from services.common.model_config import version_config_text  # noqa: E402
from tests.support import digits_eval  # noqa: E402
from tests.support.processes import start_redis, start_service  # noqa: E402

SHUNTER = [sys.executable, "-m", "services.cli.main"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="plain/monitored pairs (default 2)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    subprocess.run([sys.executable, "scripts/build_examples.py"], cwd=ROOT, check=True, capture_output=True)
    digits = ROOT / "examples" / "models" / "digits"
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        _, train = digits_eval.write(tmp / "sets")
        key = f"adm-{secrets.token_urlsafe(24)}"
        (tmp / "admin.key").write_text(key)
        redis = start_redis()
        services = []
        try:
            registry = start_service(["registry", "--redis-url", redis.url, "--port", "0",
                                      "--admin-key-file", str(tmp / "admin.key")])
            services.append(registry)
            env = {**os.environ, "SHUNTER_REGISTRY": registry.address, "SHUNTER_ADMIN_KEY": key}
            text, _ = version_config_text(digits, "2")
            monitored = yaml.safe_load(text)
            plain = {k: v for k, v in monitored.items() if k != "monitoring"}
            for name, config, extra in (("digits", monitored, ["--reference", str(train)]),
                                        ("digitsplain", plain, [])):
                path = tmp / f"{name}.yaml"
                path.write_text(yaml.safe_dump(config))
                subprocess.run([*SHUNTER, "models", "register", name, "--version", "2", "--artifact",
                                str(digits / "2"), "--config", str(path), "--state", "production", *extra],
                               cwd=ROOT, env=env, check=True, capture_output=True)
            worker = start_service(["worker", "--registry", registry.address, "--serve", "digits,digitsplain",
                                    "--admin-key", key, "--port", "0"])
            services.append(worker)
            _wait_for_profile(worker)
            runs: dict[str, list[float]] = {"digitsplain": [], "digits": []}
            cpu: dict[str, list[float]] = {"digitsplain": [], "digits": []}
            monitor_cpu: list[float] = []
            for round_ in range(args.rounds):
                # ABBA order: neither model always runs first on a worker still warming up.
                for model in (list(runs) if round_ % 2 == 0 else list(runs)[::-1]):
                    before, monitor_before = _cpu_s(worker.proc.pid), _monitor_cpu_s(worker.proc.pid)
                    done = subprocess.run(
                        [*SHUNTER, "bench", "--target", worker.address, "--model", model, "--model-version", "2",
                         "--concurrency", str(args.concurrency), "--duration", str(args.duration), "--json"],
                        # A cluster worker serves inference to router and admin keys only.
                        cwd=ROOT, check=True, capture_output=True, text=True, env={**env, "SHUNTER_API_KEY": key},
                    )
                    report = json.loads(done.stdout.strip().splitlines()[-1])
                    assert report["codes"] == {"OK": report["requests"]}, report["codes"]
                    runs[model].append(report["throughput_rps"])
                    # Includes the warm-up's calls: count them at the measured rate.
                    calls = report["requests"] * (1 + 0.5 / args.duration)
                    cpu[model].append(1000 * (_cpu_s(worker.proc.pid) - before) / calls)
                    if model == "digits":
                        monitor_cpu.append(1000 * (_monitor_cpu_s(worker.proc.pid) - monitor_before) / calls)
            metrics = urllib.request.urlopen(worker.metrics_url, timeout=10).read().decode()
            dropped = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                          if line.startswith("shunter_monitor_dropped_batches_total{"))
        finally:
            for service in reversed(services):
                service.terminate()
            redis.kill()
    off, on = statistics.median(runs["digitsplain"]), statistics.median(runs["digits"])
    cpu_off, cpu_on = statistics.median(cpu["digitsplain"]), statistics.median(cpu["digits"])
    result = {
        "concurrency": args.concurrency, "duration_s": args.duration, "rounds": args.rounds,
        "plain_rps": runs["digitsplain"], "monitored_rps": runs["digits"],
        "cost_percent": round(100 * (1 - on / off), 2),
        "plain_cpu_s_per_1000": cpu["digitsplain"], "monitored_cpu_s_per_1000": cpu["digits"],
        "cpu_cost_percent": round(100 * (cpu_on / cpu_off - 1), 2),
        "monitor_thread_cpu_s_per_1000": monitor_cpu,
        "monitor_thread_share_percent": round(100 * statistics.median(monitor_cpu) / cpu_on, 2),
        "dropped_batches": dropped, "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"digits, {args.concurrency} in flight, {args.duration:g} s x {args.rounds} rounds, "
              f"{os.cpu_count()} CPUs")
        print(f"  plain:      {', '.join(f'{r:.0f}' for r in runs['digitsplain'])} req/s (median {off:.0f})")
        print(f"  monitored:  {', '.join(f'{r:.0f}' for r in runs['digits'])} req/s (median {on:.0f})")
        print(f"  cost:       {result['cost_percent']:.1f} % of throughput; {dropped:.0f} batches not monitored")
        print(f"  worker CPU: plain {cpu_off:.3f} s, monitored {cpu_on:.3f} s per 1000 requests "
              f"({result['cpu_cost_percent']:+.1f} %); load average {result['load_average']:.1f}")
        print(f"  monitor thread: {statistics.median(monitor_cpu) * 1000:.1f} ms CPU per 1000 requests, "
              f"{result['monitor_thread_share_percent']:.1f} % of the monitored worker's CPU")
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
