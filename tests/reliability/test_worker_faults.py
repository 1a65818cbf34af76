"""A worker SIGSTOPped under load, and a worker 50 ms slower beside a fast one, through a router.

SIGSTOP (issue #11.8): the stopped worker keeps its connection open, so only the stream
link's liveness ping notices; its pending requests must fail over (retried on the other
worker, so the client sees no failure) within the ping interval + timeout, not a deadline.
Bars: 0 failed, recovery <= 5 s (1 s interval + 2 s timeout + margin).

Slow worker (issue #11.9): the router reaches one worker through tests/support/delay_line.py,
which adds 50 ms to every reply. Bars: the slow worker gets <= 10 % of the requests and the
p99 stays <= 2x the p99 with both fast.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest

from tests.integration.router.cluster import metric, worker_inferences
from tests.reliability import load, report
from tests.reliability.cluster import quick_repository, quick_request, start_small

SECONDS = float(os.environ.get("SHUNTER_RELIABILITY_SECONDS", "10"))
DEADLINE_S = 10.0


@pytest.fixture()
def cluster(request, tmp_path):
    cluster = start_small(tmp_path, quick_repository(tmp_path / "models"))
    try:
        cluster.start_worker("quick")
        cluster.start_worker("quick", behind_delay_line=request.param)
        cluster.add_router()
        cluster.create_key("data")
        yield cluster
    finally:
        for worker in cluster.workers:
            if worker.proc.poll() is None:
                os.kill(worker.proc.pid, signal.SIGCONT)
        cluster.stop()


def auth(cluster) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {cluster.keys['data']}"),)


@pytest.mark.parametrize("cluster", [False], indirect=True)
async def test_sigstop_worker(cluster):
    router, victim = cluster.routers[0], cluster.workers[1]
    metadata, payload = auth(cluster), quick_request()
    pids = {"router": router.proc.pid, "worker (stopped)": victim.proc.pid,
            "worker (other)": cluster.workers[0].proc.pid}
    await load.closed_loop(router.address, payload, 8, 1.0, metadata=metadata)  # warm-up
    baseline = await load.closed_loop(router.address, payload, 8, 2.0, metadata=metadata)
    bound_s = 3 * float(np.percentile(baseline.latencies(), 99))
    before = {who: load.rss_mb(pid) for who, pid in pids.items()}
    failures_before = metric(router.metrics_url, "shunter_router_liveness_failures_total")
    fault_at = SECONDS / 4

    async def stop_later() -> float:
        await asyncio.sleep(fault_at)
        os.kill(victim.proc.pid, signal.SIGSTOP)
        return time.monotonic()

    stopper = asyncio.ensure_future(stop_later())
    run = await load.closed_loop(router.address, payload, 8, SECONDS, timeout_s=DEADLINE_S, metadata=metadata)
    stopped_at = await stopper
    # Recovery: from the stop to the completion of the last call that failed or took over 3x
    # the baseline p99 (the calls that were pending on the stopped worker).
    late = [done for code, lat, done in zip(run.codes, run.latency_s, run.done_at, strict=True)
            if done >= stopped_at and (code != "OK" or lat > bound_s)]
    recovery = max(late) - stopped_at if late else 0.0
    stall_ms = 1000 * max((lat for lat, done in zip(run.latency_s, run.done_at, strict=True) if done >= stopped_at),
                          default=0.0)
    liveness_failures = metric(router.metrics_url, "shunter_router_liveness_failures_total") - failures_before
    retries = metric(router.metrics_url, "shunter_router_retries_total")
    os.kill(victim.proc.pid, signal.SIGCONT)
    after = {who: load.rss_mb(pid) for who, pid in pids.items()}
    codes = run.by_code()
    failed = run.total - codes.get("OK", 0)
    bars = {
        "0 failed (pending requests retried on the other worker)": failed == 0,
        "recovery <= 5 s": recovery <= 5.0,
        "the stopped worker was found by the liveness ping": liveness_failures >= 1,
    }
    rows = [
        ("load", f"closed loop, 8 callers through the router for {SECONDS:.0f} s, deadline {DEADLINE_S:.0f} s; "
                 f"SIGSTOP one of two workers {fault_at:.1f} s in"),
        ("failed / total by code", f"{failed} / {run.total}: " + ", ".join(f"{c} {n}" for c, n in codes.items())),
        ("recovery time (stop to last slow or failed call)", f"{recovery:.2f} s"),
        ("longest call after the stop", f"{stall_ms:.0f} ms"),
        ("baseline p99 (both running)", report.fmt_ms(1000 * bound_s / 3)),
        ("liveness failures / retries (router metrics)", f"{liveness_failures:.0f} / {retries:.0f}"),
        *((f"RSS {who} before / after", f"{before[who]:.0f} / {after[who]:.0f} MiB") for who in pids),
        ("machine", load.load_average()),
        ("flags", "router defaults: --liveness-interval-s 1 --liveness-timeout-s 2"),
    ]
    report.record("sigstop-worker", "A worker SIGSTOPped under load", rows, bars)
    assert all(bars.values()), (bars, rows)


@pytest.mark.parametrize("cluster", [True], indirect=True)
async def test_slow_worker_beside_fast(cluster):
    router = cluster.routers[0]
    fast, slow = cluster.workers
    line = cluster.delay_lines[0]
    metadata, payload = auth(cluster), quick_request()
    await load.closed_loop(router.address, payload, 4, 1.0, metadata=metadata)  # warm-up

    async def run_measured() -> tuple[load.Outcomes, float, float]:
        f0, s0 = worker_inferences(fast.metrics_url), worker_inferences(slow.metrics_url)
        run = await load.closed_loop(router.address, payload, 4, SECONDS / 2, metadata=metadata)
        return run, worker_inferences(fast.metrics_url) - f0, worker_inferences(slow.metrics_url) - s0

    both_fast, f_base, s_base = await run_measured()
    line.delay(True)
    await asyncio.sleep(0.2)
    with_slow, f_n, s_n = await run_measured()
    line.delay(False)
    base_p99 = load.percentile_ms(both_fast.latencies(), 99)
    slow_p99 = load.percentile_ms(with_slow.latencies(), 99)
    share = s_n / max(f_n + s_n, 1)
    ejections = metric(router.metrics_url, "shunter_router_worker_ejections_total")
    codes = with_slow.by_code()
    bars = {
        "slow worker's share <= 10 %": share <= 0.10,
        "p99 <= 2x the p99 with both fast": slow_p99 is not None and base_p99 is not None
        and slow_p99 <= 2 * base_p99,
        "no failed call": set(codes) == {"OK"},
    }
    rows = [
        ("load", f"closed loop, 4 callers through the router, {SECONDS / 2:.0f} s per phase"),
        ("both fast: p50 / p99, share of the second", f"{report.fmt_ms(load.percentile_ms(both_fast.latencies(), 50))}"
         f" / {report.fmt_ms(base_p99)}, {100 * s_base / max(f_base + s_base, 1):.0f} %"),
        ("one 50 ms slower: p50 / p99", f"{report.fmt_ms(load.percentile_ms(with_slow.latencies(), 50))} / "
                                        f"{report.fmt_ms(slow_p99)}"),
        ("slow worker's share", f"{100 * share:.1f} % ({s_n:.0f} of {f_n + s_n:.0f})"),
        ("failed / total by code", f"{with_slow.total - codes.get('OK', 0)} / {with_slow.total}: "
         + ", ".join(f"{c} {n}" for c, n in codes.items())),
        ("worker ejections (router metric)", f"{ejections:.0f}"),
        ("machine", load.load_average()),
        ("flags", "router defaults: --outlier-ratio 3 --outlier-cooloff-s 10"),
    ]
    report.record("slow-worker", "A worker 50 ms slower beside a fast one", rows, bars)
    assert all(bars.values()), (bars, rows)
