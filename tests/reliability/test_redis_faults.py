"""Redis killed (AOF, restarted with its data), hung (SIGSTOP), and restarted without data, under load.

One registry, two workers and a router share one redis-server. During the fault the router
serves from its table and applies rate limits locally; the registry serves reads from its
last snapshot and refuses writes. When Redis comes back empty (no persistence, issue #11.2)
the registry sees its data gone and writes its last snapshot back instead of publishing an
empty catalogue. Load runs on two keys: an unlimited one (every call must succeed) and one
limited to RATE/s with a burst of BURST (its calls may only be OK or RESOURCE_EXHAUSTED).

Bars: inference keeps serving (0 failed on the unlimited key; the limited key sees nothing
but OK and RESOURCE_EXHAUSTED); no registry state lost (models, versions and keys after
Redis returns equal those before, and a write succeeds); rate limits fall back locally (the
router counted local decisions and admitted at most 2 x BURST + RATE x the outage, + 1 s
slack, + 2, on the limited key while Redis was away: one burst when the router's local bucket
starts, one when Redis's bucket, expired or wiped meanwhile, takes over again).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from tests.integration.router.cluster import metric
from tests.reliability import load, report
from tests.reliability.cluster import quick_repository, quick_request
from tests.reliability.faults import (
    SECONDS,
    at,
    auth,
    codes_text,
    failed,
    router_metric,
    rss,
    rss_rows,
    start_fault_cluster,
)

DEADLINE_S = 10.0
CALLERS = 6
RATE, BURST = 50, 10
MODES = {
    "kill": ("Redis (AOF) killed and restarted with its data", True),
    "hang": ("Redis hung (SIGSTOP) and resumed", True),
    "wipe": ("Redis restarted without its data (no persistence)", False),
}


@pytest.fixture()
def cluster(request, tmp_path):
    _, appendonly = MODES[request.param]
    cluster = start_fault_cluster(tmp_path, quick_repository(tmp_path / "models"), appendonly=appendonly)
    try:
        cluster.start_worker("quick")
        cluster.start_worker("quick")
        cluster.add_router()
        cluster.create_key("data")
        cluster.create_key("limited", rate=rpb.RateLimit(per_second=RATE, burst=BURST))
        yield cluster
    finally:
        if cluster.redis.proc is not None and cluster.redis.proc.poll() is None:
            os.kill(cluster.redis.proc.pid, signal.SIGCONT)
        cluster.stop()


async def registry_state(cluster) -> tuple[set, set]:
    async def read(client):
        models = {(m.name, v.version) for m in await client.list_models() for v in m.versions}
        keys = {(k.key_id, k.revoked) for k in await client.list_api_keys()}
        return models, keys

    state, _ = await asyncio.to_thread(cluster.admin, read)
    return state


def admitted_in(run: load.Outcomes, start: float, end: float) -> int:
    return sum(1 for code, done in zip(run.codes, run.done_at, strict=True) if code == "OK" and start <= done <= end)


@pytest.mark.parametrize("cluster", list(MODES), indirect=True)
async def test_redis_fault_under_load(cluster, request):
    mode = request.node.callspec.params["cluster"]
    title, _ = MODES[mode]
    router, redis = cluster.routers[0], cluster.redis
    payload = quick_request()
    data, limited = auth(cluster.keys["data"]), auth(cluster.keys["limited"])
    await load.closed_loop(router.address, payload, CALLERS, 1.0, metadata=data)  # warm-up
    models_before, keys_before = await registry_state(cluster)
    workers_before = await asyncio.to_thread(cluster.ready_worker_addresses)
    pids = {"router": router.proc.pid, "registry": cluster.registry.proc.pid,
            **{f"worker {i}": w.proc.pid for i, w in enumerate(cluster.workers)}}
    before = rss(pids)
    local_before = router_metric(router, "shunter_router_rate_limit_local_total")
    resets_before = metric(cluster.registry.metrics_url, "shunter_registry_store_resets_total")
    fault_in, outage_s = SECONDS / 4, SECONDS / 2
    seen: dict[str, float] = {}

    def fault() -> None:
        if mode == "hang":
            os.kill(redis.proc.pid, signal.SIGSTOP)
        else:
            redis.kill()

    def restore() -> None:
        if mode == "hang":
            os.kill(redis.proc.pid, signal.SIGCONT)
        else:
            redis.start()  # same port and directory: AOF replays for "kill"; "wipe" comes back empty

    # Recovery: Redis back -> the registry holds everything it held before and takes a write
    # (polled from Redis's return on, while the load still runs).
    async def try_write(client):
        return await client.create_api_key("after-the-fault")

    state: dict = {"models": set(), "keys": set(), "workers": set(), "polls": 0, "recovery": None}

    async def recover(back_at: float) -> None:
        deadline = back_at + 60
        wrote = False
        while time.monotonic() < deadline:
            state["polls"] += 1
            try:
                if not wrote:
                    await asyncio.to_thread(cluster.admin, try_write)
                    wrote = True
                state["models"], state["keys"] = await registry_state(cluster)
                state["workers"] = await asyncio.to_thread(cluster.ready_worker_addresses)
            except Exception:  # Redis or the registry still coming back
                await asyncio.sleep(0.2)
                continue
            if (models_before <= state["models"] and keys_before <= state["keys"]
                    and workers_before <= state["workers"]):
                state["recovery"] = time.monotonic() - back_at
                return
            await asyncio.sleep(0.2)

    async def outage() -> tuple[float, float]:
        down_at = await at(fault_in, fault)
        await asyncio.sleep(min(2.0, outage_s))
        seen["router redis_up"] = await asyncio.to_thread(router_metric, router, "shunter_router_redis_up")
        await asyncio.sleep(max(0.0, down_at + outage_s - time.monotonic()))
        back_at = await at(0, restore)
        await recover(back_at)
        return down_at, back_at

    faulting = asyncio.ensure_future(outage())
    run, limited_run = await asyncio.gather(
        load.closed_loop(router.address, payload, CALLERS, SECONDS, timeout_s=DEADLINE_S, metadata=data),
        load.closed_loop(router.address, payload, 2, SECONDS, timeout_s=DEADLINE_S, metadata=limited, connections=1),
    )
    down_at, back_at = await faulting
    recovery, attempts = state["recovery"], state["polls"]
    models_after, keys_after, workers_after = state["models"], state["keys"], state["workers"]
    # Serving after recovery: the old keys still authenticate.
    tail = await load.closed_loop(router.address, payload, CALLERS, 1.0, timeout_s=DEADLINE_S, metadata=data)
    after = rss(pids)
    local = router_metric(router, "shunter_router_rate_limit_local_total") - local_before
    resets = metric(cluster.registry.metrics_url, "shunter_registry_store_resets_total") - resets_before
    outage = back_at - down_at
    # The limited key while Redis was away (from the fault to its return, and 1 s of slack for
    # a router that had not yet noticed): at most RATE x that window plus two bursts, the fresh
    # local bucket's and the Redis bucket's when Redis takes over again, plus its 2 callers'
    # calls admitted before the window that completed in it (calls are counted at completion).
    window = outage + 1.0
    admitted = admitted_in(limited_run, down_at, down_at + window)
    allowed = 2 * BURST + RATE * window + 2
    limited_codes = set(limited_run.by_code())
    bars = {
        "inference keeps serving: 0 failed on the unlimited key": failed(run) == 0,
        "the limited key sees only OK and RESOURCE_EXHAUSTED": limited_codes <= {"OK", "RESOURCE_EXHAUSTED"},
        "no registry state lost (models, versions, keys, both workers ready; a write succeeds) within 60 s":
            recovery is not None,
        "rate limits fall back locally (local decisions counted, admitted <= 2 x burst + rate x window + 2)":
            local > 0 and admitted <= allowed,
        "0 failed after recovery": failed(tail) == 0,
    }
    if mode == "wipe":
        bars["the registry wrote its snapshot back (store_resets counted)"] = resets >= 1
    rows = [
        ("load", f"closed loop through one router for {SECONDS:.0f} s: {CALLERS} callers on an unlimited key, 2 on a "
                 f"key limited to {RATE}/s burst {BURST}; deadline {DEADLINE_S:.0f} s"),
        ("fault", f"{title}: {fault_in:.1f} s in, for {outage:.1f} s"),
        ("failed / total by code (unlimited key)", codes_text(run)),
        ("limited key by code", codes_text(limited_run, ok=("OK", "RESOURCE_EXHAUSTED"))),
        ("limited key admitted during the outage window", f"{admitted} in {window:.1f} s (bar <= {allowed:.0f})"),
        ("router: redis_up during the outage / local rate-limit decisions",
         f"{seen.get('router redis_up', float('nan')):.0f} / {local:.0f}"),
        ("registry store resets (snapshot written back)", f"{resets:.0f}"),
        ("recovery time (Redis back to registry state complete and a write accepted)",
         ("-" if recovery is None else f"{recovery:.2f} s") + f" ({attempts} polls; measured while the load ran)"),
        ("registry after: model versions / keys / ready workers (before)",
         f"{len(models_after)} / {len(keys_after)} / {len(workers_after)} ({len(models_before)} / {len(keys_before)}"
         f" / {len(workers_before)}; +1 key written after)"),
        ("slowest call (unlimited key)", f"{1000 * max(run.latency_s, default=0):.0f} ms"),
        ("after recovery, 1 s closed loop", codes_text(tail)),
        *rss_rows(before, after),
        ("machine", load.load_average()),
        ("flags", "router defaults: --redis-timeout-s 0.25 --redis-retry-after-s 1"),
    ]
    notes = ""
    if {"INTERNAL", "UNKNOWN"} & (set(run.by_code()) | limited_codes):
        # What the router logged about it, so the section says where the code came from.
        logged = [line for line in router.logs().splitlines() if "ERROR" in line or "Error" in line]
        notes = "Router log lines naming an error:\n\n```\n" + "\n".join(logged[-20:] or ["(none)"]) + "\n```"
        print("router log:\n" + router.logs())
    report.record(f"redis-{mode}", title + " under load", rows, bars, notes=notes)
    assert all(bars.values()), (bars, rows)
