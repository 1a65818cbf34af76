#!/usr/bin/env python
"""Router CPU per request: unary ModelInfer calls against one ModelStreamInfer stream.

Brings up a one-worker cluster with `shunter up` (as router.py does) on a model whose
compute is negligible, drives the router with `shunter bench` closed loop, unary and
then ``--stream``, and divides the router process's CPU time (psutil: user + system,
its threads included) over the measured run by the requests it answered. The worker's
CPU per request is printed beside it: on the router's stream link to the worker, that is
what a message costs a Shunter process on the receiving side of a stream.

    .venv/bin/python scripts/bench/router_cpu.py                 # identity model, 64 in flight
    .venv/bin/python scripts/bench/router_cpu.py --concurrency 16 --duration 5

CPU time counts only what the router did, so it is less sensitive to a busy machine than
latency, but a starved process still pays more per request for its wake-ups: compare
runs made on the same machine, alternating (``--clients unary,stream,unary,stream``).

``--floor`` adds a third row: the same clients against a bare relay (grpc.aio, bytes in and
out, one worker stream per client stream, nothing parsed, no auth, no choice of worker),
what any Python gRPC process pays to pass a stream message each way; the router's own
work is what it costs above that.

``--callgrind`` counts instructions instead, which do not depend on what else the machine
runs: a second router is started under valgrind's callgrind (instrumentation off until
the measured run; ``callgrind_control`` turns it on and off) and the runs go to it. A
router under valgrind is some 50 times slower, so it is the bottleneck and answers many
messages per wake-up: compare such counts with each other, not with CPU times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from router import identity_repository, start_cluster  # noqa: E402

from services.bench import BenchOptions, run_bench  # noqa: E402

UNARY_METHODS = ("ModelInfer", "ModelMetadata", "ModelConfig", "ServerReady")


async def relay(target: str, key: str) -> None:
    """The floor: a gRPC hop that forwards ModelStreamInfer messages (and the bench's probe
    calls) to ``target`` as bytes, and does nothing else."""
    import asyncio

    import grpc

    channel = grpc.aio.insecure_channel(target)
    metadata = (("authorization", f"Bearer {key}"),)
    open_link = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")

    async def stream(requests, context):
        link = open_link(metadata=metadata)

        async def pump() -> None:
            async for raw in requests:
                await link.write(raw)
            await link.done_writing()

        writer = asyncio.ensure_future(pump())
        try:
            async for raw in link:
                yield raw
        finally:
            writer.cancel()

    def unary(name: str):
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{name}")

        async def forward(raw: bytes, context) -> bytes:
            return await call(raw, metadata=metadata)

        return grpc.unary_unary_rpc_method_handler(forward)

    handlers = {name: unary(name) for name in UNARY_METHODS}
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(stream)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def start_relay(worker: str, key: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--relay-to", worker],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "SHUNTER_RELAY_KEY": key},
    )
    assert proc.stdout is not None
    return proc, f"127.0.0.1:{proc.stdout.readline().strip()}"


def service_process(up: psutil.Process, service: str) -> psutil.Process:
    """The child of `shunter up` running ``shunter <service>``."""
    for child in up.children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if service in cmdline and "services.cli.main" in " ".join(cmdline):
            return child
    raise SystemExit(f"no {service} process under shunter up")


def cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


class Callgrind:
    """A router under callgrind beside the cluster's own, counting instructions on demand."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        key_file = tmp / "admin.key"
        key_file.write_text(env["SHUNTER_ADMIN_KEY"])
        self.out = tmp / "callgrind.out"
        self.runs = 0
        self.idle_per_s = 0.0
        self.proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={self.out}",
                sys.executable,
                "-m",
                "services.cli.main",
                "router",
                "--registry",
                env["SHUNTER_REGISTRY"],
                "--port",
                "0",
                "--admin-key-file",
                str(key_file),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "SHUNTER_ROUTER_REDIS_URL": env["SHUNTER_REDIS_URL"]},
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("shunter router listening on "):
                self.address = line.split()[4]
                return
        raise SystemExit(f"router under callgrind exited with {self.proc.wait()}")

    def control(self, *flags: str) -> None:
        subprocess.run(["callgrind_control", *flags, str(self.proc.pid)], check=True, capture_output=True)

    def instructions(self, run) -> tuple[object, int]:
        """``run()``'s result and the instructions the router executed meanwhile, less what
        an idle router executes in as long (its timers: statistics flushes, the watch)."""
        result, total, seconds = self._count(run)
        self.runs += 1
        for dump in self.out.parent.glob(self.out.name + "*"):  # kept for callgrind_annotate
            dump.rename(dump.with_name(f"run{self.runs}-{dump.name}"))
        _, idle, idle_s = self._count(lambda: time.sleep(min(seconds, 10.0)))
        self.idle_per_s = idle / idle_s
        return result, max(0, round(total - self.idle_per_s * seconds))

    def _count(self, run) -> tuple[object, int, float]:
        for old in self.out.parent.glob(self.out.name + "*"):
            old.unlink()
        self.control("--zero")
        self.control("--instr=on")
        started = time.monotonic()
        result = run()
        seconds = time.monotonic() - started
        self.control("--instr=off")
        self.control("--dump")
        time.sleep(1.0)
        total = 0
        for dump in self.out.parent.glob(self.out.name + "*"):
            match = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.M)
            total += int(match.group(1)) if match else 0
        return result, total, seconds

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def measure(
    target: str,
    model: str,
    key: str,
    stream: bool,
    args: argparse.Namespace,
    router: psutil.Process,
    worker: psutil.Process,
    callgrind: Callgrind | None = None,
) -> dict[str, float]:
    options = BenchOptions(
        target=target,
        model=model,
        concurrency=args.concurrency,
        duration_s=args.duration,
        api_key=key,
        processes=args.processes,
        warmup_s=0.0,
        stream=stream,
        # A router under callgrind answers 64 in flight in seconds, not milliseconds.
        timeout_s=120.0 if args.callgrind else 10.0,
    )
    router_before, worker_before = cpu_s(router), cpu_s(worker)
    instructions = 0
    if callgrind is None:
        report = run_bench(options)
    else:
        report, instructions = callgrind.instructions(lambda: run_bench(options))
    router_used, worker_used = cpu_s(router) - router_before, cpu_s(worker) - worker_before
    if set(report["codes"]) != {"OK"}:
        raise SystemExit(f"non-OK responses: {report['codes']}")
    # Every request of the run (the probe and the few answered after the window included).
    requests = report["requests"] + 1
    return {
        "requests": requests,
        "throughput_rps": report["throughput_rps"],
        "p99_ms": report["latency_ms"]["p99"],
        "router_cpu_us_per_request": router_used / requests * 1e6,
        "worker_cpu_us_per_request": worker_used / requests * 1e6,
        "router_instructions_per_request": instructions / requests,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, help="default: a generated identity model")
    parser.add_argument("--model", default="identity")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--processes", type=int, default=1, help="bench client processes")
    parser.add_argument(
        "--clients",
        default="unary,stream",
        help="comma-separated runs, in order, on one cluster (e.g. unary,stream,unary,stream)",
    )
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="count a callgrind router's instructions per request instead of CPU time",
    )
    parser.add_argument("--floor", action="store_true", help="also measure a bare stream relay (see above)")
    parser.add_argument("--relay-to", help=argparse.SUPPRESS)  # the --floor relay's own process
    args = parser.parse_args()
    if args.relay_to:
        import uvloop

        uvloop.run(relay(args.relay_to, os.environ["SHUNTER_RELAY_KEY"]))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="shunter-bench-router-cpu-"))
    repository = args.model_repository.resolve() if args.model_repository else identity_repository(tmp / "models")
    proc, env, worker_address = start_cluster(repository, tmp / "run")
    callgrind: Callgrind | None = None
    try:
        up = psutil.Process(proc.pid)
        router, worker = service_process(up, "router"), service_process(up, "worker")
        key = env["SHUNTER_API_KEY"]
        target = env["SHUNTER_ROUTER"]
        if args.callgrind:
            callgrind = Callgrind(env, tmp)
            router, target = psutil.Process(callgrind.proc.pid), callgrind.address
        # One unmeasured pass each way first: connections, streams and caches warm.
        short = argparse.Namespace(**{**vars(args), "duration": 1.0})
        for stream in (False, True):
            measure(target, args.model, key, stream, short, router, worker)
        rows = {}
        for number, name in enumerate(args.clients.split(",")):
            if name not in ("unary", "stream"):
                raise SystemExit(f"--clients: unknown client {name!r} (unary or stream)")
            row = measure(target, args.model, key, name == "stream", args, router, worker, callgrind)
            rows[name if name not in rows else f"{name}#{number + 1}"] = {**row, "load_1m": os.getloadavg()[0]}
        if args.floor:
            relay_proc, relay_address = start_relay(worker_address, env["SHUNTER_ADMIN_KEY"])
            try:
                relay_cpu = psutil.Process(relay_proc.pid)
                measure(relay_address, args.model, key, True, short, relay_cpu, worker)
                row = measure(relay_address, args.model, key, True, args, relay_cpu, worker)
                rows["relay"] = {**row, "load_1m": os.getloadavg()[0]}
            finally:
                relay_proc.terminate()
                relay_proc.wait(30)
    finally:
        if callgrind is not None:
            callgrind.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    print(
        f"\nrouter CPU per request, model '{args.model}', closed loop {args.concurrency} in flight "
        f"({psutil.cpu_count()} CPUs shared by client, router and worker)\n"
    )
    print(
        f"{'client':<10}{'requests':>8}{'req/s':>9}{'p99 ms':>9}{'router µs/req':>15}{'worker µs/req':>15}"
        f"{'load 1m':>9}{'router Ir/req':>15}"
    )
    for name, row in rows.items():
        print(
            f"{name:<10}{row['requests']:>8}{row['throughput_rps']:>9.0f}{row['p99_ms']:>9.1f}"
            f"{row['router_cpu_us_per_request']:>15.0f}{row['worker_cpu_us_per_request']:>15.0f}"
            f"{row['load_1m']:>9.2f}{row['router_instructions_per_request']:>15.0f}"
        )
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "router_cpu.json").write_text(
        json.dumps({"model": args.model, **vars(args), "rows": rows}, default=str, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
