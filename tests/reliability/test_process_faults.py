"""A worker SIGKILLed, the registry killed for a while, a router killed: under load, real processes.

Worker SIGKILL: two workers behind one router, 8 callers; one worker is SIGKILLed a quarter
into the run. Its connection breaks, so every request it held is one the router can retry
on the other worker. Bar: 0 failed.

Registry killed: the registry is SIGKILLed for half the run and restarted on its port.
Routers keep serving the table they hold; workers keep serving. Bars: 0 failed; the router
saw the outage (registry_connected went 0) and its table revision did not change; after the
restart both workers are listed again and the router is connected (the recovery time).

Router killed: two routers, one client channel over both with gRPC's own retries
(round_robin, retry on UNAVAILABLE); one router is SIGKILLed a quarter in. Bar: the
client's retries see 0 failures.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from tests.integration.router.cluster import wait_for
from tests.reliability import load, report
from tests.reliability.cluster import quick_repository, quick_request
from tests.reliability.faults import (
    SECONDS,
    at,
    auth,
    codes_text,
    failed,
    recovery_after,
    retrying_closed_loop,
    router_metric,
    rss,
    rss_rows,
    start_fault_cluster,
    wait_router_connected,
)

DEADLINE_S = 10.0
CALLERS = 8


@pytest.fixture()
def cluster(request, tmp_path):
    routers = getattr(request, "param", 1)
    cluster = start_fault_cluster(tmp_path, quick_repository(tmp_path / "models"))
    try:
        cluster.start_worker("quick")
        cluster.start_worker("quick")
        for _ in range(routers):
            cluster.add_router()
        cluster.create_key("data")
        yield cluster
    finally:
        cluster.stop()


async def baseline(address: str, payload: bytes, metadata) -> float:
    """Warm up, then the p99 (s) of a short closed-loop run with nothing wrong."""
    await load.closed_loop(address, payload, CALLERS, 1.0, metadata=metadata)
    run = await load.closed_loop(address, payload, CALLERS, 2.0, metadata=metadata)
    return float(np.percentile(run.latencies(), 99))


async def test_worker_sigkill_under_load(cluster):
    router, victim, other = cluster.routers[0], cluster.workers[1], cluster.workers[0]
    metadata, payload = auth(cluster.keys["data"]), quick_request()
    base_p99 = await baseline(router.address, payload, metadata)
    pids = {"router": router.proc.pid, "worker (surviving)": other.proc.pid}
    before = rss(pids)
    retries_before = router_metric(router, "shunter_router_retries_total")
    fault_in = SECONDS / 4
    killer = asyncio.ensure_future(at(fault_in, victim.kill))
    run = await load.closed_loop(router.address, payload, CALLERS, SECONDS, timeout_s=DEADLINE_S, metadata=metadata)
    killed_at = await killer
    after = rss(pids)
    recovery = recovery_after(run, killed_at, 3 * base_p99)
    retries = router_metric(router, "shunter_router_retries_total") - retries_before
    after_kill = sum(1 for done in run.done_at if done >= killed_at)
    bars = {
        "0 failed (every request the killed worker held retried on the other)": failed(run) == 0,
        "calls kept completing after the kill": after_kill > 0,
    }
    rows = [
        ("load", f"closed loop, {CALLERS} callers through one router for {SECONDS:.0f} s, deadline "
                 f"{DEADLINE_S:.0f} s; SIGKILL one of two workers {fault_in:.1f} s in"),
        ("failed / total by code", codes_text(run)),
        ("calls completed after the kill", str(after_kill)),
        ("recovery time (kill to last failed or > 3x baseline p99 call)", f"{recovery:.2f} s"),
        ("baseline p99", report.fmt_ms(1000 * base_p99)),
        ("router retries during the run (metric)", f"{retries:.0f}"),
        *rss_rows(before, after),
        ("machine", load.load_average()),
    ]
    report.record("sigkill-worker", "A worker SIGKILLed under load", rows, bars)
    assert all(bars.values()), (bars, rows)


async def test_registry_killed_under_load(cluster):
    router = cluster.routers[0]
    metadata, payload = auth(cluster.keys["data"]), quick_request()
    base_p99 = await baseline(router.address, payload, metadata)
    pids = {"router": router.proc.pid, **{f"worker {i}": w.proc.pid for i, w in enumerate(cluster.workers)}}
    before = rss(pids)
    before["registry"] = load.rss_mb(cluster.registry.proc.pid)
    revision_before = router_metric(router, "shunter_router_routing_table_revision")
    addresses = {w.address for w in cluster.workers}
    outage_s = SECONDS / 2
    fault_in = SECONDS / 4
    port = cluster.registry.port
    seen: dict[str, float] = {}

    def kill() -> None:
        cluster.kill_registry()

    async def outage() -> tuple[float, float]:
        killed_at = await at(fault_in, kill)
        await asyncio.sleep(min(1.5, outage_s))
        seen["connected during the outage"] = await asyncio.to_thread(
            router_metric, router, "shunter_router_registry_connected")
        seen["revision during the outage"] = await asyncio.to_thread(
            router_metric, router, "shunter_router_routing_table_revision")
        await asyncio.sleep(max(0.0, killed_at + outage_s - time.monotonic()))
        restarted_at = time.monotonic()
        await asyncio.to_thread(cluster.start_registry, port)
        return killed_at, restarted_at

    fault = asyncio.ensure_future(outage())
    run = await load.closed_loop(router.address, payload, CALLERS, SECONDS, timeout_s=DEADLINE_S, metadata=metadata)
    killed_at, restarted_at = await fault

    def recovered() -> bool:
        return (router_metric(router, "shunter_router_registry_connected") >= 1
                and addresses <= cluster.ready_worker_addresses())

    recovery: float | None
    try:
        wait_for(recovered, 60, "router reconnected and both workers listed")
        recovery = time.monotonic() - restarted_at
    except TimeoutError:
        recovery = None
    after = rss(pids)
    after["registry"] = load.rss_mb(cluster.registry.proc.pid)
    # Serving after recovery too: a short run must be all OK.
    tail = await load.closed_loop(router.address, payload, CALLERS, 1.0, timeout_s=DEADLINE_S, metadata=metadata)
    bars = {
        "0 failed during the outage": failed(run) == 0,
        "the router saw the outage and kept its table": seen.get("connected during the outage") == 0
        and seen.get("revision during the outage") == revision_before,
        "after the restart: router connected, both workers listed (within 60 s)": recovery is not None,
        "0 failed after recovery": failed(tail) == 0,
    }
    rows = [
        ("load", f"closed loop, {CALLERS} callers through one router for {SECONDS:.0f} s, deadline "
                 f"{DEADLINE_S:.0f} s; registry SIGKILLed {fault_in:.1f} s in, restarted {outage_s:.1f} s later"),
        ("failed / total by code", codes_text(run)),
        ("recovery time (restart to router connected and both workers listed)",
         "-" if recovery is None else f"{recovery:.2f} s"),
        ("router during the outage: registry_connected / table revision (before)",
         f"{seen.get('connected during the outage', float('nan')):.0f} / "
         f"{seen.get('revision during the outage', float('nan')):.0f} ({revision_before:.0f})"),
        ("slowest call during the outage", f"{1000 * max(run.latency_s, default=0):.0f} ms "
                                           f"(baseline p99 {1000 * base_p99:.1f} ms)"),
        ("calls slow (> 3x baseline p99) or failed after the kill, until",
         f"{recovery_after(run, killed_at, 3 * base_p99):.2f} s after it"),
        ("after recovery, 1 s closed loop", codes_text(tail)),
        *rss_rows(before, after),
        ("machine", load.load_average()),
        ("flags", "workers --lease-ttl-s 5"),
    ]
    report.record("registry-kill", "The registry killed under load", rows, bars,
                  notes="RSS registry after is the restarted process.")
    assert all(bars.values()), (bars, rows)


@pytest.mark.parametrize("cluster", [2], indirect=True)
async def test_router_killed_behind_a_retrying_client(cluster):
    first, second = cluster.routers
    metadata, payload = auth(cluster.keys["data"]), quick_request()
    for router in cluster.routers:
        wait_router_connected(router)
    base_p99 = await baseline(second.address, payload, metadata)
    pids = {"router (surviving)": second.proc.pid, **{f"worker {i}": w.proc.pid for i, w in enumerate(cluster.workers)}}
    before = rss(pids)
    fault_in = SECONDS / 4
    killer = asyncio.ensure_future(at(fault_in, first.kill))
    run = await retrying_closed_loop([first.address, second.address], payload, CALLERS, SECONDS,
                                     metadata=metadata, timeout_s=DEADLINE_S)
    killed_at = await killer
    after = rss(pids)
    recovery = recovery_after(run, killed_at, 3 * base_p99)
    after_kill = sum(1 for done in run.done_at if done >= killed_at)
    bars = {
        "the client's retries see 0 failures": failed(run) == 0,
        "calls kept completing after the kill": after_kill > 0,
    }
    rows = [
        ("load", f"closed loop, {CALLERS} callers on one gRPC channel over two routers (round_robin, retry on "
                 f"UNAVAILABLE, 5 attempts) for {SECONDS:.0f} s; SIGKILL one router {fault_in:.1f} s in"),
        ("failed / total by code", codes_text(run)),
        ("calls completed after the kill", str(after_kill)),
        ("recovery time (kill to last failed or > 3x baseline p99 call)", f"{recovery:.2f} s"),
        ("baseline p99 (one router)", report.fmt_ms(1000 * base_p99)),
        *rss_rows(before, after),
        ("machine", load.load_average()),
    ]
    report.record("router-kill", "A router killed behind a retrying client", rows, bars)
    assert all(bars.values()), (bars, rows)
