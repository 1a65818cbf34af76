"""Load for the fault suite: open loop (Poisson arrivals on schedule) and closed loop, with
every call's status, latency and completion time kept, so a scenario can count failures by
code, take percentiles of admitted and of refused calls, and find when the service recovered.

Open loop follows wrk2 as `shunter bench` does: latency runs from the scheduled time, so a
client that falls behind does not hide the server's queueing; an arrival that finds
``max_in_flight`` calls outstanding is not sent and is counted as ``UNSENT``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
CHANNEL_OPTIONS = (("grpc.enable_retries", 0), ("grpc.use_local_subchannel_pool", 1))


@dataclass
class Outcomes:
    """Every call of one run: status name, latency (s), completion time (monotonic)."""

    codes: list[str] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)
    #: Open loop: latency from when the call was actually sent (the client's own lag left out).
    from_send_s: list[float] = field(default_factory=list)
    unsent: int = 0
    started: float = 0.0
    ended: float = 0.0

    def add(self, code: str, latency: float, done: float, from_send: float | None = None) -> None:
        self.codes.append(code)
        self.latency_s.append(latency)
        self.done_at.append(done)
        self.from_send_s.append(latency if from_send is None else from_send)

    @property
    def total(self) -> int:
        return len(self.codes)

    def by_code(self) -> dict[str, int]:
        counted = Counter(self.codes)
        if self.unsent:
            counted["UNSENT"] = self.unsent
        return dict(sorted(counted.items(), key=lambda kv: (kv[0] != "OK", kv[0])))

    def latencies(self, code: str | None = "OK", exclude: str | None = None, from_send: bool = False) -> np.ndarray:
        values = self.from_send_s if from_send else self.latency_s
        return np.array([
            lat for c, lat in zip(self.codes, values, strict=True)
            if (code is None or c == code) and (exclude is None or c != exclude)
        ])

    def goodput_rps(self) -> float:
        seconds = self.ended - self.started
        return self.codes.count("OK") / seconds if seconds > 0 else 0.0


def percentile_ms(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q) * 1000) if len(values) else None


async def open_loop(
    target: str, payload: bytes, rate: float, seconds: float, *, timeout_s: float = 1.0,
    metadata: tuple[tuple[str, str], ...] | None = None, connections: int = 4, max_in_flight: int = 4096,
    seed: int = 0,
) -> Outcomes:
    rng = np.random.default_rng(seed)
    outcomes = Outcomes()
    channels = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(connections)]
    calls = [c.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None) for c in channels]
    in_flight: set[asyncio.Task] = set()
    monotonic = time.monotonic

    async def fire(due: float, call) -> None:
        sent = monotonic()
        try:
            await call(payload, metadata=metadata, timeout=timeout_s)
            code = "OK"
        except grpc.aio.AioRpcError as err:
            code = err.code().name
        done = monotonic()
        outcomes.add(code, done - due, done, done - sent)

    try:
        await asyncio.gather(*(c.channel_ready() for c in channels))
        start = outcomes.started = monotonic()
        due = start
        i = 0
        while True:
            due += rng.exponential(1.0 / rate)
            if due >= start + seconds:
                break
            delay = due - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= max_in_flight:
                outcomes.unsent += 1
                continue
            task = asyncio.create_task(fire(due, calls[i % len(calls)]))
            i += 1
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        outcomes.ended = start + seconds
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        for channel in channels:
            await channel.close()
    return outcomes


async def closed_loop(
    target: str, payload: bytes, concurrency: int, seconds: float, *, timeout_s: float = 10.0,
    metadata: tuple[tuple[str, str], ...] | None = None, connections: int = 4,
) -> Outcomes:
    outcomes = Outcomes()
    channels = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(connections)]
    calls = [c.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None) for c in channels]
    monotonic = time.monotonic

    async def caller(call) -> None:
        while monotonic() < outcomes.started + seconds:
            sent = monotonic()
            try:
                await call(payload, metadata=metadata, timeout=timeout_s)
                code = "OK"
            except grpc.aio.AioRpcError as err:
                code = err.code().name
            done = monotonic()
            outcomes.add(code, done - sent, done)

    try:
        await asyncio.gather(*(c.channel_ready() for c in channels))
        outcomes.started = monotonic()
        await asyncio.gather(*(caller(calls[i % len(calls)]) for i in range(concurrency)))
        outcomes.ended = monotonic()
    finally:
        for channel in channels:
            await channel.close()
    return outcomes


def cpu_s(pid: int, children: bool = True) -> float:
    """CPU seconds (user + system) a process has used, from /proc; with ``children``, its
    live children's too (the processes of ``--processes``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if not children:
        return total
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            total += sum(cpu_s(int(child)) for child in children.read().split())
    except OSError:
        pass
    return total


async def floor(payload: bytes, rate: float, seconds: float) -> tuple[Outcomes, float]:
    """The same open loop against a bare gRPC server that refuses every call at once
    (bare_refuser.py): the refusal latency this machine allows right now, Shunter aside, and
    the CPU seconds that server used (what refusing costs in Python gRPC alone)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("bare_refuser.py")), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        port = int(await proc.stdout.readline())
        started = cpu_s(proc.pid, children=False)
        outcomes = await open_loop(f"127.0.0.1:{port}", payload, rate, seconds)
        return outcomes, cpu_s(proc.pid, children=False) - started
    finally:
        proc.kill()
        await proc.wait()


def rss_mb(pid: int) -> float:
    """Resident memory of a process (MiB), from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} on {os.cpu_count()} CPUs"
