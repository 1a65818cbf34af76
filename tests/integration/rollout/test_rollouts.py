"""Rollouts on a real cluster: traffic through a real router to a real worker, judged by the
registry's controller from the statistics the router writes to Redis (issue 14 §2, §3)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter

import pytest

from services.common import artifacts
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.gen.shunter.rollout.v1 import rollout_pb2 as opb
from tests.integration.rollout.conftest import CONFIG, RolloutCluster, eventually, run_load
from tests.integration.router.cluster import metric

#: Short intervals and small samples keep these fast; the gates are the defaults otherwise.
FAST = dict(interval_s=2.0, gates=opb.Gates(min_requests=40))


def verdicts(decisions) -> list[str]:
    """The verdicts of a rollout's judgements (the later archiving of a version left out)."""
    return [d.verdict for d in decisions if d.verdict != "archive"]


async def finished(cluster: RolloutCluster, model: str, timeout_s: float = 60) -> opb.Rollout:
    async with await cluster.client() as client:
        return await eventually(lambda: client.get_rollout(model),
                                lambda r: r.state not in (opb.RUNNING,), timeout_s=timeout_s,
                                what=f"{model} rollout finished")


async def states(cluster: RolloutCluster, model: str) -> dict[str, int]:
    async with await cluster.client() as client:
        return {v.version: v.state for v in (await client.get_model(model)).versions}


def shunter(cluster: RolloutCluster, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **cluster.shunter_env()}
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=60)


async def rolled_back_by_itself(cluster: RolloutCluster, model: str, gate: str) -> None:
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(cluster.router.address, cluster.data_key, model, stop))
    try:
        async with await cluster.client() as client:
            await client.start_rollout(model, "2", steps=[20, 50, 100], **FAST)
            rollout = await finished(cluster, model)
            history = await client.rollout_history(model)
            policy = await client.get_traffic_policy(model)
            audit = await client.traffic_history(model)
    finally:
        stop.set()
        result = await load
    assert rollout.state == opb.ROLLED_BACK, rollout
    assert gate in rollout.reason
    assert dict(policy.weights) == {"1": 100}
    # Staged at once (no traffic), archived a few seconds later, after routers took the table.
    await eventually(lambda: states(cluster, model), lambda s: s["2"] == rpb.ARCHIVED, timeout_s=20,
                     what="the canary archived")
    assert verdicts(history)[0] == "start" and verdicts(history)[-1] == "rollback"
    assert set(verdicts(history)[1:-1]) <= {"hold"}
    # Rolled back at the first window with enough traffic: every hold before it was inconclusive.
    assert all(d.verdict != "hold" or d.outcome == "inconclusive" for d in history)
    last = history[-1]
    assert last.evidence["canary_requests"] >= 40 and last.evidence["baseline_requests"] >= 40
    assert last.gates.min_requests == 40 and last.actor == "controller"
    assert [c.action for c in audit][-2:] == ["rollout-start", "rollout-rollback"]
    assert audit[-1].who == "controller" and dict(audit[-1].after.weights) == {"1": 100}
    # No request failed because of the switch itself: only the version's own failures.
    assert set(result.codes) <= {"OK", "INTERNAL"}, result.failures
    # `rollout history` says why, for people and for scripts.
    text = await asyncio.to_thread(shunter, cluster, "rollout", "history", model)
    assert text.returncode == 0 and "rollback" in text.stdout and gate in text.stdout
    import json

    decisions = json.loads((await asyncio.to_thread(shunter, cluster, "rollout", "history", model, "--json")).stdout)
    assert decisions[-1]["verdict"] in ("rollback", "archive")
    judged = next(d for d in decisions if d["verdict"] == "rollback")
    assert {"baseline_requests", "canary_requests", "baseline_error_rate", "canary_error_rate", "canary_p99_ms",
            "error_rate_pvalue"} <= set(judged["evidence"])
    assert judged["gates"]["min_requests"] == 40 and judged["window_end_ms"] > judged["window_start_ms"]
    # Metrics: every replica exports the rollout's state; the deciding one counted the verdict.
    alive = [r for r in cluster.registries if r.proc.poll() is None]
    assert sum(metric(r.metrics_url, "shunter_rollout_decisions_total", verdict="rollback") for r in alive) >= 1
    await eventually(
        lambda: asyncio.to_thread(lambda: [metric(r.metrics_url, "shunter_rollout_state", model=model) for r in alive]),
        lambda states: states == [opb.ROLLED_BACK] * len(alive), timeout_s=10, what="shunter_rollout_state")


async def test_a_version_failing_20_percent_is_rolled_back(rollout_cluster: RolloutCluster) -> None:
    await rolled_back_by_itself(rollout_cluster, "flaky", "error rate")


async def test_a_slow_version_is_rolled_back(rollout_cluster: RolloutCluster) -> None:
    await rolled_back_by_itself(rollout_cluster, "slow", "p99")


async def test_a_good_version_is_promoted_and_users_stay_on_it(rollout_cluster: RolloutCluster) -> None:
    cluster = rollout_cluster
    async with await cluster.client() as client:
        await client.set_weights("good", {"1": 100}, sticky_header="x-user-id")
        stop = asyncio.Event()
        load = asyncio.create_task(
            run_load(cluster.router.address, cluster.data_key, "good", stop, sticky=lambda i: f"u{i % 40}"))
        try:
            # Same code on both sides: a p99 gate of ×3 leaves room for a loaded test machine.
            await client.start_rollout("good", "2", steps=[25, 50, 100], interval_s=2.0,
                                       gates=opb.Gates(min_requests=40, max_p99_ratio=3))
            rollout = await finished(cluster, "good")
            policy = await client.get_traffic_policy("good")
            history = await client.rollout_history("good")
        finally:
            stop.set()
            result = await load
        assert rollout.state == opb.PROMOTED, rollout
        assert dict(policy.weights) == {"2": 100} and policy.sticky_header == "x-user-id"
        assert [v for v in verdicts(history) if v != "hold"] == ["start", "advance", "promote"]
        # The old version: staged at weight 0 (or already archived: the keep time is 2 s here).
        now = await states(cluster, "good")
        assert now["2"] == rpb.PRODUCTION and now["1"] in (rpb.STAGED, rpb.ARCHIVED)
        # After the keep time (2 s here) the old version is archived.
        await eventually(lambda: states(cluster, "good"), lambda s: s["1"] == rpb.ARCHIVED, timeout_s=20,
                         what="the old version archived")
    assert set(result.codes) == {"OK"}, result.failures
    # Sticky: a user on the canary stays on it as its weight grows.
    moved_back = {u: seen for u, seen in result.users.items() if "2" in seen and seen[seen.index("2"):] != ["2"]}
    assert not moved_back
    assert any(seen == ["1", "2"] for seen in result.users.values())


async def test_low_traffic_pauses_and_never_rolls_back(rollout_cluster: RolloutCluster) -> None:
    cluster = rollout_cluster
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(cluster.router.address, cluster.data_key, "quiet", stop, concurrency=1,
                                        pause_s=0.2))
    try:
        async with await cluster.client() as client:
            await client.start_rollout("quiet", "2", steps=[20, 100], interval_s=1.0,
                                       gates=opb.Gates(min_requests=1000))
            rollout = await finished(cluster, "quiet", timeout_s=30)
            history = await client.rollout_history("quiet")
            policy = await client.get_traffic_policy("quiet")
            aborted = await client.abort_rollout("quiet")
            after = await client.get_traffic_policy("quiet")
    finally:
        stop.set()
        await load
    assert rollout.state == opb.PAUSED and "too little traffic" in rollout.reason
    assert verdicts(history) == ["start", "hold", "hold", "pause"]
    assert all(d.outcome in ("inconclusive", "") for d in history)
    assert dict(policy.weights) == {"1": 80, "2": 20}
    # Abort leaves no canary weight behind.
    assert aborted.state == opb.ABORTED and dict(after.weights) == {"1": 100}
    assert (await states(cluster, "quiet"))["2"] == rpb.STAGED


async def test_switch_and_rollback_under_steady_load_fail_nothing(rollout_cluster: RolloutCluster) -> None:
    cluster = rollout_cluster
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(cluster.router.address, cluster.data_key, "bluegreen", stop))
    try:
        await asyncio.sleep(0.5)
        switched = await asyncio.to_thread(shunter, cluster, "traffic", "switch", "bluegreen", "2")
        assert switched.returncode == 0, switched.stderr
        assert "weights:   2=100" in switched.stdout
        await asyncio.sleep(1.5)
        back = await asyncio.to_thread(shunter, cluster, "traffic", "rollback", "bluegreen")
        assert back.returncode == 0 and "weights:   1=100" in back.stdout, back.stderr
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        result = await load
    assert set(result.codes) == {"OK"}, result.failures
    assert result.versions["1"] > 0 and result.versions["2"] > 0
    history = await asyncio.to_thread(shunter, cluster, "traffic", "history", "bluegreen", "--json")
    import json

    changes = json.loads(history.stdout)
    assert [c["action"] for c in changes][-2:] == ["switch", "rollback"]
    assert changes[-1]["who"] == changes[-2]["who"] != "" and changes[-1]["at_ms"] >= changes[-2]["at_ms"]
    assert changes[-2]["before"]["weights"] == {"1": 100} and changes[-2]["after"]["weights"] == {"2": 100}
    assert (await states(cluster, "bluegreen")) == {"1": rpb.PRODUCTION, "2": rpb.STAGED}

    # The router's statistics count every request once, per version that served it.
    async with await cluster.client() as client:
        report = await eventually(
            lambda: client.experiment_report("bluegreen", 600),
            lambda r: {v.version: v.requests for v in r.variants} == dict(result.versions),
            timeout_s=15, what="the experiment report counting every request")
    assert report.control == "1" and all(v.errors == 0 for v in report.variants)
    text = await asyncio.to_thread(shunter, cluster, "experiment", "report", "bluegreen", "--since", "10m")
    assert text.returncode == 0 and "2 vs 1, error rate" in text.stdout and "2 vs 1, latency" in text.stdout


async def test_shadow_report_compares_every_mirrored_request(rollout_cluster: RolloutCluster) -> None:
    cluster = rollout_cluster
    async with await cluster.client() as client:
        await client.set_weights("mirror", {"1": 100}, shadow_version="2")
        await asyncio.sleep(1.0)  # the router takes the new table
        stop = asyncio.Event()
        load = asyncio.create_task(run_load(cluster.router.address, cluster.data_key, "mirror", stop))
        await asyncio.sleep(2.0)
        stop.set()
        result = await load
        report = await eventually(lambda: client.shadow_report("mirror", 600),
                                  lambda r: r.versions and r.versions[0].compared >= result.codes["OK"] * 0.9,
                                  timeout_s=15, what="the mirrors compared")
    assert set(result.codes) == {"OK"} and result.versions == {"1": result.codes["OK"]}
    shadow = report.versions[0]
    assert report.shadow_version == "2" and shadow.version == "2" and shadow.errors == 0
    # ×[1,2,3,4] against ×2: never within tolerance, and the argmax moves from class 0 to 3.
    assert shadow.agree == 0 and shadow.agreement == 0 and shadow.agreement_high < 0.05
    assert shadow.argmax_rows == shadow.compared and shadow.argmax_flips == shadow.compared
    assert sum(b.count for b in shadow.max_abs_diff) == shadow.compared
    assert [b.upper for b in shadow.max_abs_diff] == [10.0]  # |8 - 2| = 6
    assert shadow.shadow_p50_ms > 0 and shadow.primary_p50_ms > 0
    assert 0 < len(shadow.samples) <= 20
    sample = shadow.samples[0]
    assert list(sample["inputs"]["IN"]) == [1.0, 1.0, 1.0, 1.0]
    assert list(sample["shadow"]["OUT"]) == [1.0, 2.0, 3.0, 4.0] and list(sample["primary"]["OUT"]) == [2.0] * 4
    text = await asyncio.to_thread(shunter, cluster, "shadow", "report", "mirror", "--since", "10m")
    assert text.returncode == 0 and "label flips" in text.stdout and "disagreement:" in text.stdout


async def test_bad_input_is_refused_and_changes_nothing(rollout_cluster: RolloutCluster) -> None:
    cluster = rollout_cluster
    async with await cluster.client() as client:
        # Version 3: registered, but its sha256 is wrong, so no worker will ever serve it.
        await client.register_model_version("bad", 3, artifacts.uri_for(cluster.repository / "bad" / "1"), "0" * 64,
                                            CONFIG)
        # A model whose only policy is the one its registration gave it: nothing to roll back to.
        fresh = cluster.repository / "bad" / "1"
        await client.register_model_version("fresh", 1, artifacts.uri_for(fresh), artifacts.sha256_of(fresh), CONFIG)

        async def snapshot() -> tuple:
            policy = await client.get_traffic_policy("bad")
            return (dict(policy.weights), len(await client.traffic_history("bad")),
                    len(await client.rollout_history("bad")), await states(cluster, "bad"))

        before = await snapshot()
        cases = [
            (("rollout", "start", "bad", "--to", "9"), 1, "version 9 of model 'bad' is not registered"),
            (("rollout", "start", "bad", "--to", "3"), 1, "no worker reports bad version 3 ready"),
            (("rollout", "start", "bad", "--to", "2", "--steps", "5,5,50"), 2, "--steps must increase"),
            (("rollout", "start", "bad", "--to", "2", "--steps", "50,120"), 2, "120 is not a percent"),
            (("rollout", "start", "bad", "--to", "2", "--interval", "500ms"), 2, "under the minimum of 1s"),
            (("rollout", "start", "bad", "--to", "2", "--interval", "soon"), 2, "is not a duration"),
            (("rollout", "pause", "bad"), 1, "has no rollout; nothing to pause"),
            (("rollout", "abort", "bad"), 1, "has no rollout; nothing to abort"),
            (("rollout", "status", "bad"), 1, "model 'bad' has no rollout"),
            (("traffic", "switch", "bad", "3"), 1, "no worker reports bad version 3 ready"),
            (("traffic", "switch", "bad", "7"), 1, "version 7 of model 'bad' is not registered"),
            (("traffic", "rollback", "fresh"), 1, "no earlier traffic policy"),
        ]
        for args, code, message in cases:
            done = await asyncio.to_thread(shunter, cluster, *args)
            assert (done.returncode, message in done.stderr) == (code, True), (args, done.stderr)
            assert await snapshot() == before, args

        # A second rollout while one runs.
        started = await asyncio.to_thread(shunter, cluster, "rollout", "start", "bad", "--to", "2", "--interval",
                                          "60s", "--min-requests", "100000")
        assert started.returncode == 0, started.stderr
        during = await snapshot()
        again = await asyncio.to_thread(shunter, cluster, "rollout", "start", "bad", "--to", "2")
        assert again.returncode == 1 and "abort it first" in again.stderr and "ALREADY_EXISTS" in again.stderr
        switch = await asyncio.to_thread(shunter, cluster, "traffic", "switch", "bad", "2")
        assert switch.returncode == 1 and "abort it before" in switch.stderr
        weights = await asyncio.to_thread(shunter, cluster, "traffic", "set", "bad", "1=50", "2=50")
        assert weights.returncode == 1 and "owns its weights" in weights.stderr
        assert await snapshot() == during
        options = await asyncio.to_thread(shunter, cluster, "traffic", "set", "bad", "--sticky-header", "x-user-id")
        assert options.returncode == 0, options.stderr  # options are not the rollout's
        status = await asyncio.to_thread(shunter, cluster, "rollout", "status", "bad")
        assert "canary:    5%" in status.stdout and "running" in status.stdout
        assert (await asyncio.to_thread(shunter, cluster, "rollout", "abort", "bad")).returncode == 0
        assert dict((await client.get_traffic_policy("bad")).weights) == {"1": 100}


async def test_a_rollout_resumes_after_redis_restarts(rollout_cluster: RolloutCluster) -> None:
    cluster = rollout_cluster
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(cluster.router.address, cluster.data_key, "restart", stop))
    try:
        async with await cluster.client() as client:
            await client.start_rollout("restart", "2", steps=[10, 20, 30, 40, 100], interval_s=1.0,
                                       gates=opb.Gates(min_requests=10, max_p99_ratio=50))
            await eventually(lambda: client.get_rollout("restart"), lambda r: r.step >= 1, timeout_s=60,
                             what="step 1")
        await asyncio.to_thread(cluster.redis.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(cluster.redis.start)
        rollout = await finished(cluster, "restart", timeout_s=90)
        async with await cluster.client() as client:
            history = await client.rollout_history("restart")
    finally:
        stop.set()
        await load
    assert rollout.state == opb.PROMOTED, rollout
    assert Counter(d.step for d in history if d.verdict == "advance") == Counter(range(3))


@pytest.mark.slow
async def test_killing_the_acting_controller_mid_rollout_takes_no_step_twice(
    rollout_cluster: RolloutCluster,
) -> None:
    cluster = rollout_cluster
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(cluster.router.address, cluster.data_key, "held", stop))
    try:
        async with await cluster.client() as client:
            await client.start_rollout("held", "2", steps=list(range(10, 101, 10)), interval_s=1.0,
                                       gates=opb.Gates(min_requests=10, max_p99_ratio=50))
            await eventually(lambda: client.get_rollout("held"), lambda r: r.step >= 2, timeout_s=60,
                             what="step 2")
        leader = next(r for r in cluster.registries
                      if metric(r.metrics_url, "shunter_rollout_controller_leader") == 1)
        leader.kill()
        rollout = await finished(cluster, "held", timeout_s=90)
        async with await cluster.client() as client:
            history = await client.rollout_history("held")
    finally:
        stop.set()
        await load
    assert rollout.state == opb.PROMOTED, rollout
    advanced = Counter(d.step for d in history if d.verdict == "advance")
    assert advanced == Counter(range(8)), advanced  # steps 0..7 advanced once each, 8 promoted
    assert [d.step for d in history if d.verdict == "promote"] == [8]
    fences = [d.fence for d in history if d.actor == "controller"]
    assert fences == sorted(fences) and fences[-1] > fences[0]  # a successor acted after the kill
