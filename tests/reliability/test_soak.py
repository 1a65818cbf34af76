"""The soak: half load for SHUNTER_SOAK_SECONDS (``scripts/reliability --soak``: 1800 by default).

One router in front of two workers serving ``paced`` (a batch of 4 takes 50 ms, so capacity
is set by the model, not by how busy the machine is). Capacity is measured closed loop, then
Poisson arrivals at half of it run for the soak, in SAMPLE_S slices; after each slice the
RSS and open file descriptors of router, workers and registry are sampled.

Figures: RSS slope per process (least squares over the second half of the samples, so
start-up growth does not count; MiB per hour), open file descriptors first / last / most,
errors by code. Bars: 0 failed calls; file descriptors at the end within FD_SLACK of the
start; RSS slope under SLOPE_BAR_MIB_H for every process. A run shorter than LONG_S (to
prove the scenario works) is too short for a slope per hour to mean anything (a 0.3 MiB
wobble over 30 s reads as +36 MiB/h), so there the RSS bar is growth over the run under
SHORT_GROWTH_MIB instead; the slope is still reported. Without SHUNTER_SOAK_SECONDS it is
skipped.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from scipy import stats

from tests.reliability import load, report
from tests.reliability.cluster import paced_repository, paced_request
from tests.reliability.faults import auth, codes_text, failed, open_fds, start_fault_cluster

SOAK_S = float(os.environ.get("SHUNTER_SOAK_SECONDS", "0"))
SAMPLE_S = float(os.environ.get("SHUNTER_SOAK_SAMPLE_SECONDS", "10"))
FD_SLACK = 16
SLOPE_BAR_MIB_H = 20.0
LONG_S = 600.0
SHORT_GROWTH_MIB = 16.0
DEADLINE_S = 5.0

pytestmark = pytest.mark.skipif(SOAK_S <= 0, reason="the soak runs with scripts/reliability --soak "
                                                     "(or SHUNTER_SOAK_SECONDS=N)")


@pytest.fixture()
def cluster(tmp_path):
    cluster = start_fault_cluster(tmp_path, paced_repository(tmp_path / "models"))
    try:
        cluster.start_worker("paced")
        cluster.start_worker("paced")
        cluster.add_router()
        cluster.create_key("data")
        yield cluster
    finally:
        cluster.stop()


def slope_mib_per_hour(times: list[float], values: list[float]) -> float:
    """Least-squares slope over the second half of the samples (at least 3), in MiB per hour."""
    half = len(times) // 2
    t, v = times[half:], values[half:]
    if len(t) < 3:
        t, v = times, values
    if len(t) < 2:
        return float("nan")
    return float(stats.linregress(t, v).slope * 3600)


async def test_soak_at_half_load(cluster):
    router = cluster.routers[0]
    metadata, payload = auth(cluster.keys["data"]), paced_request()
    await load.closed_loop(router.address, payload, 8, 2.0, metadata=metadata)  # warm-up
    saturated = await load.closed_loop(router.address, payload, 32, 5.0, metadata=metadata)
    capacity = saturated.goodput_rps()
    rate = capacity / 2
    procs = {"router": router, "registry": cluster.registry,
             **{f"worker {i}": w for i, w in enumerate(cluster.workers)}}
    times: list[float] = []
    rss: dict[str, list[float]] = {who: [] for who in procs}
    fds: dict[str, list[int]] = {who: [] for who in procs}

    def sample(t: float) -> None:
        times.append(t)
        for who, p in procs.items():
            rss[who].append(load.rss_mb(p.proc.pid))
            fds[who].append(open_fds(p.proc.pid))

    start = time.monotonic()
    sample(0.0)
    total = load.Outcomes(started=start)
    slices = max(1, round(SOAK_S / SAMPLE_S))
    for i in range(slices):
        run = await load.open_loop(router.address, payload, rate, SOAK_S / slices, timeout_s=DEADLINE_S,
                                   metadata=metadata, seed=i)
        for code, lat, done in zip(run.codes, run.latency_s, run.done_at, strict=True):
            total.add(code, lat, done)
        total.unsent += run.unsent
        sample(time.monotonic() - start)
    total.ended = time.monotonic()
    slopes = {who: slope_mib_per_hour(times, rss[who]) for who in procs}
    p99 = load.percentile_ms(total.latencies(), 99)
    bars = {
        "0 failed calls": failed(total) == 0,
        f"open file descriptors at the end within {FD_SLACK} of the start": all(
            f[-1] - f[0] <= FD_SLACK for f in fds.values()),
    }
    if SOAK_S >= LONG_S:
        bars[f"RSS slope < {SLOPE_BAR_MIB_H:.0f} MiB/h for every process"] = all(
            not np.isnan(s) and s < SLOPE_BAR_MIB_H for s in slopes.values())
    else:
        bars[f"RSS growth over the run < {SHORT_GROWTH_MIB:.0f} MiB for every process (a short run)"] = all(
            r[-1] - r[0] < SHORT_GROWTH_MIB for r in rss.values())
    rows = [
        ("load", f"open loop, Poisson, {rate:.1f}/s (half of the {capacity:.1f}/s capacity measured closed loop) "
                 f"through one router to two workers for {total.ended - start:.0f} s, deadline {DEADLINE_S:.0f} s"),
        ("samples", f"{len(times)}, every {SOAK_S / slices:.0f} s"),
        ("failed / total by code", codes_text(total)),
        ("admitted p50 / p99", f"{report.fmt_ms(load.percentile_ms(total.latencies(), 50))} / {report.fmt_ms(p99)}"),
        ("recovery time", "none needed (no fault injected)"),
        *((f"RSS {who} first / last (slope, second half)",
           f"{rss[who][0]:.0f} / {rss[who][-1]:.0f} MiB ({slopes[who]:+.1f} MiB/h)") for who in procs),
        *((f"open fds {who} first / last / most", f"{fds[who][0]} / {fds[who][-1]} / {max(fds[who])}")
          for who in procs),
        ("machine", load.load_average()),
    ]
    notes = ""
    if SOAK_S < LONG_S:
        notes = (f"A {SOAK_S:.0f} s run (the soak is 1800 s with `scripts/reliability --soak`): too short for a slope "
                 "per hour to mean much, so its RSS bar is growth over the run; it proves the scenario runs.")
    report.record("soak", "Soak at half load", rows, bars, notes=notes)
    assert all(bars.values()), (bars, rows)
