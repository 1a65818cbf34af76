"""Where the requests of a closed-loop load wait, and what the worker's CPU goes to.

Starts one standalone worker on one model, drives it with ``shunter bench`` (closed loop,
``--concurrency`` single-row callers) and reports, for the measured window:

- the batches the worker executed (ModelStatistics: inference_count / execution_count);
- where the callers' requests were, on average (Little's law over the counters, so no
  sampling bias): inside the worker's gRPC handlers (the ``shunter_in_flight_requests``
  gauge, sampled), waiting in the batcher's queue (queue ns / window) and executing
  (compute ns / window); the rest are in the client processes and the transport;
- CPU seconds per worker thread, grouped by thread name (``/proc/PID/task/*/stat``): the
  event loop (``MainThread``/the process name), each engine instance, gRPC's threads;
  and the load generator's CPU (its processes' ``/proc`` counters);
- the load generator's rows/s and p99, and ``uptime``'s load before and after.

Run it under ``nice -n 10`` on a shared machine, ABAB against a change. It prints one JSON
object. Not part of the report runner: a standalone probe for the batching work.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import servers as srv  # noqa: E402

from services.common.ready_line import parse_ready_line  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) per thread of process ``pid``, keyed "name/tid".

    Python's thread names do not reach the OS, so the engine threads show the process
    name: the main thread (tid == pid) is the event loop; the rest are told apart by tid.
    """
    totals: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        key = "loop" if int(task.name) == pid else f"{name}/{task.name}"
        totals[key] = (int(fields[11]) + int(fields[12])) / TICKS
    return totals


def run_queue(pid: int) -> dict[str, tuple[float, float]]:
    """Seconds on a CPU and seconds runnable but waiting for one, per thread (``schedstat``).

    The second figure says whether a thread that does not use a full core is idle or is
    held back by the other runnable threads on the machine.
    """
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on_cpu, waiting, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        key = "loop" if int(task.name) == pid else task.name
        found[key] = (int(on_cpu) / 1e9, int(waiting) / 1e9)
    return found


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and all its live descendants."""
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        stack.extend(int(c) for c in children)
    return total


def gauge(metrics_text: str, name: str, label: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def dispatch_reasons(metrics_at: str) -> dict[str, float]:
    """Batches executed so far by the rule that sent them (``shunter_worker_batches_total``)."""
    text = urllib.request.urlopen(f"http://{metrics_at}/metrics", timeout=5).read().decode()
    counts = {}
    for line in text.splitlines():
        match = re.match(r'shunter_worker_batches_total\{.*reason="(\w+)".*\} (\S+)', line)
        if match:
            counts[match.group(1)] = float(match.group(2))
    return counts


def model_stats(target: str, model: str) -> dict:
    """The model's ModelStatistics counters, summed over its versions (calls go to the default one)."""
    with grpc.insecure_channel(target) as channel:
        reply = srv.pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            srv.pb.ModelStatisticsRequest(name=model), timeout=10
        )
    totals = dict.fromkeys(
        ("inference_count", "execution_count", "requests", "queue_ns", "compute_ns", "success_ns"), 0
    )
    for stats in reply.model_stats:
        inference = stats.inference_stats
        totals["inference_count"] += stats.inference_count
        totals["execution_count"] += stats.execution_count
        totals["requests"] += inference.success.count
        totals["queue_ns"] += inference.queue.ns
        totals["compute_ns"] += inference.compute_input.ns + inference.compute_infer.ns + inference.compute_output.ns
        totals["success_ns"] += inference.success.ns
    return totals


def start_worker(
    repository: Path, model: str, env: dict[str, str], profile: str | None, checkout: Path = ROOT
) -> tuple[subprocess.Popen, str, str]:
    # cProfile sees only the main thread: the event loop, which is what it is for here.
    # ``python -m`` from the checkout: .venv/bin/shunter would import the shared venv's
    # editable install (another checkout), not this one's code.
    launcher = [
        str(VENV_BIN / "python"),
        *(["-m", "cProfile", "-o", profile] if profile else []),
        "-m",
        "services.cli.main",
    ]
    proc = subprocess.Popen(
        [
            *launcher,
            "worker",
            "--model-repository",
            str(repository),
            "--models",
            model,
            "--port",
            "0",
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=checkout,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        ready = parse_ready_line(line)
        if ready is not None:
            return proc, ready.address, ready.metrics
    raise RuntimeError(f"worker exited ({proc.wait()}) before it was ready")


def start_triton(repository: Path, model: str, version: str, instances: int) -> tuple[subprocess.Popen, str]:
    """The report's Triton peer on ``model``'s ONNX version (its batcher settings from config.yaml),
    started by the report's own launcher from its venv (.bench-venvs/triton)."""
    work = Path(tempfile.mkdtemp(prefix="probe-triton-"))
    triton = srv.launch_triton("probe-triton", srv.model_specs(repository, {model: version}), instances, work, work)
    failed = srv.wait_ready([triton])
    if failed:
        raise RuntimeError(f"triton did not start: {failed['probe-triton']}")
    return triton.proc, triton.address


def perf_analyzer_result(out: str) -> dict:
    """perf_analyzer's last window in ``shunter bench --json``'s shape (the fields used here)."""
    throughput = re.findall(r"Throughput: ([\d.]+) infer/sec", out)
    latency = {p: int(v) / 1000 for p, v in re.findall(r"(p50|p99) latency: (\d+) usec", out)}
    if not throughput or "p99" not in latency:
        raise RuntimeError(f"perf_analyzer printed no result:\n{out[-1500:]}")
    return {"rows_per_s": float(throughput[-1]), "latency_ms": latency, "codes": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tabular")
    parser.add_argument("--repository", type=Path, default=ROOT / "examples" / "models")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--label", default="")
    parser.add_argument("--profile", help="run the worker under cProfile, writing the event loop's profile here")
    parser.add_argument("--input-sample", action="store_true", help="send the model's sample.npz rows")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the worker")
    parser.add_argument(
        "--triton",
        metavar="VERSION",
        help="serve this ONNX version with the report's Triton peer (PyTriton, .bench-venvs/triton) instead",
    )
    parser.add_argument(
        "--perf-analyzer", type=Path, metavar="LIBDIR", help="load with perf_analyzer; LIBDIR holds libcudart.so.12"
    )
    parser.add_argument(
        "--checkout", type=Path, default=ROOT, help="run the worker from this checkout (e.g. the base commit)"
    )
    parser.add_argument("--instances", type=int, default=2, help="Triton's model instances (--triton)")
    args = parser.parse_args()

    env = dict(os.environ)
    env.update(item.split("=", 1) for item in args.env)
    load_before = os.getloadavg()
    if args.triton:
        worker, target = start_triton(args.repository, args.model, args.triton, args.instances)
        metrics_at = ""
    else:
        worker, target, metrics_at = start_worker(args.repository, args.model, env, args.profile, args.checkout)
    try:
        bench = [
            str(VENV_BIN / "python"),
            "-m",
            "services.cli.main",
            "bench",
            "--target",
            target,
            "--model",
            args.model,
            "--concurrency",
            str(args.concurrency),
            "--duration",
            str(args.duration),
            "--json",
            "--warmup",
            "1.5",
        ]
        if args.processes:
            bench += ["--processes", str(args.processes)]
        if args.stream:
            bench += ["--stream"]
        sample = args.repository / args.model / "sample.npz"
        if sample.exists() and args.input_sample:
            bench += ["--input", str(sample)]
        client_env = None
        if args.perf_analyzer:
            # NVIDIA's C++ load generator (tritonclient's wheel): it costs a fraction of the
            # Python client per call, which tells the generator's limits from the server's.
            window_ms = int(args.duration * 1000 / 3)
            bench = [
                str(VENV_BIN / "perf_analyzer"),
                "-m",
                args.model,
                "-u",
                target,
                "-i",
                "grpc",
                "--concurrency-range",
                f"{args.concurrency}",
                "--measurement-interval",
                str(window_ms),
                "--stability-percentage",
                "50",
                "--max-trials",
                "3",
            ]
            client_env = {**os.environ, "LD_LIBRARY_PATH": str(args.perf_analyzer.resolve())}
        client = subprocess.Popen(
            bench, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=client_env
        )
        # The window starts once the load generator is running (its processes take a
        # while to start on a busy machine) and has warmed up, and ends before it stops.
        first = model_stats(target, args.model)["inference_count"]
        while model_stats(target, args.model)["inference_count"] == first:
            if client.poll() is not None:
                raise RuntimeError(f"shunter bench exited early: {client.stderr.read()[-2000:]}")
            time.sleep(0.1)
        time.sleep(1.0)
        reasons0 = dispatch_reasons(metrics_at) if metrics_at else {}
        queue0 = run_queue(worker.pid)
        stats0, cpu0, client0, t0 = (
            model_stats(target, args.model),
            thread_cpu(worker.pid) if metrics_at else {"server": process_tree_cpu(worker.pid)},
            process_tree_cpu(client.pid),
            time.monotonic(),
        )
        samples: list[float] = []
        stop = threading.Event()

        def sample_gauges() -> None:
            while not stop.wait(0.25):
                try:
                    text = urllib.request.urlopen(f"http://{metrics_at}/metrics", timeout=1).read().decode()
                except OSError:
                    continue
                label = 'method="ModelStreamInfer"' if args.stream else 'method="ModelInfer"'
                samples.append(gauge(text, "shunter_in_flight_requests", label))

        sampler = threading.Thread(target=sample_gauges, daemon=True)
        if metrics_at:
            sampler.start()
        time.sleep(max(0.5, args.duration - 1.5))
        stats1, cpu1, client1, t1 = (
            model_stats(target, args.model),
            thread_cpu(worker.pid) if metrics_at else {"server": process_tree_cpu(worker.pid)},
            process_tree_cpu(client.pid),
            time.monotonic(),
        )
        reasons1 = dispatch_reasons(metrics_at) if metrics_at else {}
        queue1 = run_queue(worker.pid)
        stop.set()
        out, err = client.communicate(timeout=120)
        if client.returncode != 0:
            raise RuntimeError(f"shunter bench failed: {err[-2000:]}")
        result = perf_analyzer_result(out) if args.perf_analyzer else json.loads(out)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    window = t1 - t0
    delta = {key: stats1[key] - stats0[key] for key in stats0}
    cpu = {name: round(cpu1.get(name, 0.0) - cpu0.get(name, 0.0), 2) for name in cpu1}
    cpu = {name: value for name, value in cpu.items() if value >= 0.05}
    report = {
        "label": args.label,
        "server": "triton" if args.triton else "shunter",
        "model": args.model,
        "concurrency": args.concurrency,
        "env": args.env,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "mean_batch": round(delta["inference_count"] / max(1, delta["execution_count"]), 2),
        "executions": delta["execution_count"],
        "dispatch_reasons": {k: int(v - reasons0.get(k, 0)) for k, v in reasons1.items() if v > reasons0.get(k, 0)},
        "rows_per_s_server": round(delta["inference_count"] / window, 1),
        "bench": {
            "rows_per_s": round(result["rows_per_s"], 1),
            "p50_ms": round(result["latency_ms"]["p50"], 2),
            "p99_ms": round(result["latency_ms"]["p99"], 2),
            "codes": result["codes"],
        },
        "where": {
            "in_handlers": round(sum(samples) / max(1, len(samples)), 1),
            "in_queue": round(delta["queue_ns"] / 1e9 / window, 1),
            "executing": round(delta["compute_ns"] / 1e9 / window, 1),
            "in_worker_success_span": round(delta["success_ns"] / 1e9 / window, 1),
        },
        "worker_cpu_s": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
        "worker_cpu_per_s": round(sum(cpu.values()) / window, 2),
        "worker_cpu_total_s": round(sum(cpu.values()), 2),
        "worker_threads": len(cpu1),
        # Shares of the window: the loop on a CPU, and runnable but waiting for one.
        "loop_on_cpu": round((queue1["loop"][0] - queue0["loop"][0]) / window, 2),
        "loop_waiting_for_cpu": round((queue1["loop"][1] - queue0["loop"][1]) / window, 2),
        "other_threads_waiting_for_cpu": round(
            sum(queue1[t][1] - queue0.get(t, (0.0, 0.0))[1] for t in queue1 if t != "loop") / window, 2
        ),
        "client_cpu_s": round(client1 - client0, 2),
        "window_s": round(window, 2),
        "worker_cpu_us_per_row": round(sum(cpu.values()) / max(1, delta["inference_count"]) * 1e6, 1),
    }
    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    main()
