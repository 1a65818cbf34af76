"""Overload at 10x capacity, open loop, against a worker and through a router.

Steps: capacity (closed loop, enough callers to keep every batch full), unloaded p99 (one
caller), then Poisson arrivals at 10x capacity for SECONDS, then recovery (time until ten
calls in a row are OK within 3x the unloaded p99). Bars (issue #11.6): admitted p99 <= 3x
unloaded p99, refusals <= 5 ms (p99), goodput >= 90 % of capacity, full recovery.

The model is ``paced`` (a python model whose batch of 4 takes 50 ms: capacity about 80/s,
set by the model rather than by the machine), so 10x is a rate one Python client can send
on a shared machine; SHUNTER_OVERLOAD_MODEL=digits or =minilm uses that example model
instead (digits' 10x is usually more than the client can send: the section then says what
was sent; minilm's capacity is set by its compute, which takes the machine's cores).
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests.reliability import load, report
from tests.reliability.cluster import digits_request, minilm_request, paced_repository, paced_request, start_small
from tests.support.models import build_examples
from tests.support.processes import start_service

SECONDS = float(os.environ.get("SHUNTER_RELIABILITY_SECONDS", "10"))
MODEL = os.environ.get("SHUNTER_OVERLOAD_MODEL", "paced")
#: What the scenario runs worker and router with (README "Overload and failure handling").
WORKER_FLAGS = ("--max-queue-wait-s", "0.05")
ROUTER_FLAGS = ("--max-in-flight-per-worker", "12")
DEADLINE_S = 1.0
#: Seconds of the same open loop against a bare gRPC server (the machine's floor).
FLOOR_S = min(SECONDS, 5.0)


#: The example models the scenario can overload instead of ``paced``, and their requests.
EXAMPLE_REQUESTS = {"digits": digits_request, "minilm": minilm_request}


def repository(tmp_path):
    if MODEL in EXAMPLE_REQUESTS:
        return build_examples(), EXAMPLE_REQUESTS[MODEL]()
    return paced_repository(tmp_path / "models"), paced_request()


async def recovery_s(target: str, payload: bytes, metadata, bound_s: float, limit_s: float = 60.0) -> float | None:
    """Seconds until ten calls in a row are OK within ``bound_s``; None if not within ``limit_s``."""
    start = time.monotonic()
    streak = 0
    while time.monotonic() - start < limit_s:
        run = await load.closed_loop(target, payload, 1, 0.3, timeout_s=DEADLINE_S, metadata=metadata, connections=1)
        for code, latency in zip(run.codes, run.latency_s, strict=True):
            streak = streak + 1 if code == "OK" and latency <= bound_s else 0
            if streak >= 10:
                return time.monotonic() - start
    return None


async def scenario(name: str, target: str, payload: bytes, metadata, pids: dict[str, int]) -> None:
    before = {who: load.rss_mb(pid) for who, pid in pids.items()}
    await load.closed_loop(target, payload, 8, 2.0, metadata=metadata)  # warm-up
    unloaded = await load.closed_loop(target, payload, 1, max(3.0, SECONDS / 3), metadata=metadata, connections=1)
    unloaded_p99 = load.percentile_ms(unloaded.latencies(), 99)
    # The services are this process's children: the client's own CPU leaves them out.
    client = "client (this load generator)"
    measured = {**pids, client: os.getpid()}

    def cpu() -> dict[str, float]:
        return {who: load.cpu_s(pid, children=who != client) for who, pid in measured.items()}

    cpu_before, saturated_s = cpu(), max(3.0, SECONDS / 2)
    saturated = await load.closed_loop(target, payload, 32, saturated_s, metadata=metadata)
    capacity = saturated.goodput_rps()
    # Cores the services used to serve at capacity: what 90 % of capacity needs of them again.
    serving_cores = sum(used - cpu_before[who] for who, used in cpu().items() if who != client) / saturated_s
    rate = 10 * capacity
    cpu_before = cpu()
    overload = await load.open_loop(target, payload, rate, SECONDS, timeout_s=DEADLINE_S, metadata=metadata)
    cpu_used = {who: used - cpu_before[who] for who, used in cpu().items()}
    load_ended = time.monotonic()
    recovered = await recovery_s(target, payload, metadata, 3 * unloaded_p99 / 1000)
    recovered_after = time.monotonic() - load_ended if recovered is not None else None
    after = {who: load.rss_mb(pid) for who, pid in pids.items()}
    # The machine's own floor, right after: a bare gRPC server refusing at once, same rate.
    bare, bare_cpu_s = await load.floor(payload, rate, FLOOR_S)
    refusal_cpu_s = bare_cpu_s / max(bare.total, 1)
    bare_sent = bare.latencies("UNAVAILABLE", from_send=True)

    admitted_p99 = load.percentile_ms(overload.latencies("OK"), 99)
    refused = overload.latencies("UNAVAILABLE")
    # A refusal's time runs from when the client sent it: the bar is on the server answering
    # at once, and a client on a busy machine sends late (counted in the scheduled-time figure).
    refused_sent = overload.latencies("UNAVAILABLE", from_send=True)
    refused_p99 = load.percentile_ms(refused_sent, 99)
    goodput = overload.goodput_rps()
    sent_rate = overload.total / SECONDS
    codes = overload.by_code()
    failed = overload.total - codes.get("OK", 0)
    # The cores the services could have had for serving: what the client left, less what
    # refusing the other 90 % of the calls costs Python gRPC alone (the bare server's CPU per call).
    cores, client_cores = os.cpu_count() or 1, cpu_used[client] / SECONDS
    refusing_cores = 0.9 * sent_rate * refusal_cpu_s
    left = max(0.0, cores - client_cores - refusing_cores)
    attainable = min(1.0, left / serving_cores) if serving_cores else 1.0
    bars = {
        f"admitted p99 <= 3x unloaded p99 ({3 * unloaded_p99:.1f} ms)": admitted_p99 is not None
        and admitted_p99 <= 3 * unloaded_p99,
        "refusals p99 <= 5 ms (from send)": refused_p99 is None or refused_p99 <= 5.0,
        f"goodput >= 90 % of capacity ({0.9 * capacity:.1f}/s)": goodput >= 0.9 * capacity,
        "no code but OK and UNAVAILABLE": set(codes) <= {"OK", "UNAVAILABLE"},
        "full recovery after the load": recovered is not None,
    }
    rows = [
        ("model", MODEL),
        ("load", f"open loop, Poisson, offered {rate:.0f}/s (10x capacity) for {SECONDS:.0f} s, "
                 f"sent {sent_rate:.0f}/s, deadline {DEADLINE_S:.1f} s"),
        ("capacity (closed loop, 32 callers)", f"{capacity:.1f}/s"),
        ("unloaded p99 (1 caller)", report.fmt_ms(unloaded_p99)),
        ("failed / total by code", f"{failed} / {overload.total}: " + ", ".join(f"{c} {n}" for c, n in codes.items())),
        ("admitted p50 / p99", f"{report.fmt_ms(load.percentile_ms(overload.latencies('OK'), 50))} / "
                               f"{report.fmt_ms(admitted_p99)}"),
        ("refusals (UNAVAILABLE) p50 / p99 from send", f"{report.fmt_ms(load.percentile_ms(refused_sent, 50))} / "
                                                       f"{report.fmt_ms(refused_p99)}"),
        ("refusals p50 / p99 from the scheduled time", f"{report.fmt_ms(load.percentile_ms(refused, 50))} / "
                                                       f"{report.fmt_ms(load.percentile_ms(refused, 99))}"),
        ("goodput", f"{goodput:.1f}/s ({100 * goodput / capacity:.0f} % of capacity)"),
        ("recovery time", "-" if recovered_after is None else f"{recovered_after:.2f} s"),
        *((f"RSS {who} before / after", f"{before[who]:.0f} / {after[who]:.0f} MiB") for who in pids),
        *((f"CPU {who} per call sent (overload phase)", f"{1000 * cpu_used[who] / max(overload.total, 1):.3f} ms "
           f"({100 * cpu_used[who] / SECONDS:.0f} % of a core)") for who in measured),
        ("floor: a bare gRPC server refusing at once, same rate: p50 / p99 from send (what the client sent it)",
         f"{report.fmt_ms(load.percentile_ms(bare_sent, 50))} / {report.fmt_ms(load.percentile_ms(bare_sent, 99))} "
         f"({bare.total / FLOOR_S:.0f}/s)"),
        ("floor: the bare server's CPU per refusal", f"{1000 * refusal_cpu_s:.3f} ms"),
        ("attainable goodput: (cores - the client's - refusing 90 % of calls at the floor's cost) "
         "/ the services' cores at capacity",
         f"{100 * attainable:.0f} % of capacity (({cores} - {client_cores:.2f} - {refusing_cores:.2f}) "
         f"/ {serving_cores:.2f} cores)"),
        ("machine", load.load_average()),
        ("flags", "worker " + " ".join(WORKER_FLAGS) + ("; router " + " ".join(ROUTER_FLAGS) if "router" in pids
                                                         else "")),
    ]
    notes = ""
    if sent_rate < 0.9 * rate:
        client_cpu = 100 * cpu_used[client] / SECONDS
        notes = (f"The client sent {sent_rate:.0f}/s of the {rate:.0f}/s offered (the rest is UNSENT: its in-flight "
                 f"cap was reached), using {client_cpu:.0f} % of a core beside the server on a "
                 f"{os.cpu_count()}-CPU machine: the load generator, not the server, was the limit, so latency "
                 "and codes here are the client's own backlog (latency counts from the scheduled time), and 10x "
                 "was not offered. The bar is not met and not claimed.")
    if attainable < 0.9 and goodput < 0.9 * capacity:
        notes += ("\n\n" if notes else "") + (
            f"Goodput missed 90 % of capacity ({100 * goodput / capacity:.0f} %), and could not have met it on "
            f"this machine: at capacity the services used {serving_cores:.2f} cores; while the client sent "
            f"{sent_rate:.0f}/s it took {client_cores:.2f} of the {cores}, and refusing 90 % of those calls costs "
            f"a bare Python gRPC server {refusing_cores:.2f} more, which leaves at most {100 * attainable:.0f} % "
            "of capacity. The bar needs the load generator on other cores, or more cores."
        )
    floor_p99 = load.percentile_ms(bare_sent, 99)
    if refused_p99 is not None and refused_p99 > 5.0 and floor_p99 is not None and floor_p99 > 5.0:
        near = refused_p99 <= 2 * floor_p99
        notes += ("\n\n" if notes else "") + (
            f"Refusals missed the 5 ms bar (p99 {refused_p99:.1f} ms), and so did a bare gRPC server that "
            f"refuses every call at once, run right after on the same machine at the same rate (p99 "
            f"{floor_p99:.1f} ms)"
            + (": within 2x of that floor, the tail is how soon a process is scheduled on this machine, not the "
               "work a refusal does." if near else
               "; this run's refusals were over 2x that floor (the machine's load moves within a minute, so "
               "compare runs by the CPU per call above).")
            + " The bar is not met here and not claimed."
        )
    report.record(name, f"Overload at 10x, {MODEL}, {'through a router' if 'router' in pids else 'worker'}",
                  rows, bars, notes)
    assert all(bars.values()), (bars, rows)


async def test_overload_worker(tmp_path):
    repo, payload = repository(tmp_path)
    worker = start_service(["worker", "--model-repository", str(repo), "--models", MODEL, "--port", "0",
                            *WORKER_FLAGS])
    try:
        await scenario(f"overload-worker-{MODEL}", worker.address, payload, None, {"worker": worker.proc.pid})
    finally:
        worker.terminate()


@pytest.fixture()
def small_cluster(tmp_path):
    repo, _ = repository(tmp_path)
    cluster = start_small(tmp_path, repo)
    try:
        cluster.start_worker(MODEL, *WORKER_FLAGS)
        cluster.add_router(*ROUTER_FLAGS)
        cluster.create_key("data")
        yield cluster
    finally:
        cluster.stop()


async def test_overload_router(small_cluster):
    router, worker = small_cluster.routers[0], small_cluster.workers[0]
    _, payload = repository_payload()
    metadata = (("authorization", f"Bearer {small_cluster.keys['data']}"),)
    await asyncio.sleep(0.5)
    await scenario(f"overload-router-{MODEL}", router.address, payload, metadata,
                   {"router": router.proc.pid, "worker": worker.proc.pid})


def repository_payload():
    return None, EXAMPLE_REQUESTS[MODEL]() if MODEL in EXAMPLE_REQUESTS else paced_request()
