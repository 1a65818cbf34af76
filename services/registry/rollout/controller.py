"""The rollout controller: one acting registry replica judges every running rollout.

**One actor.** Every replica runs ``RolloutController``; each tick it tries to take or
renew a lease in Redis (``SET NX PX`` in a script). Taking the lease issues a new
*fencing token* (``INCR``). A replica that lost its lease (paused, partitioned, killed)
may still try to write, so every write is a compare-and-set inside the store's optimistic
transaction: the lease key is ``WATCH``ed and must still hold this replica's token, the
rollout's ``revision`` must be the one this replica read, and the record must not carry a
newer fence. A successor therefore continues from the recorded step, and no step is
taken twice (``rollout history`` shows each step once).

**One judgement per interval.** When a running rollout's ``next_judgement_at_ms`` has
passed, the controller reads both versions' statistics over the same window (from the
step's start, or the last conclusive judgement, to now) and the canary's drift score from the
monitor in the same process (the largest feature score by its method; none without a
reference profile), calls the pure ``judgement.judge``, and writes the rollout, the decision with its evidence and any
policy change in one transaction: advance (canary weight up), hold, pause, rollback
(baseline 100 % in one write, the canary archived a few seconds later) or promote (canary 100 % and
production; the old version stays loaded at weight 0 for ``keep_baseline_s``, then it is
archived).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from services.common import background
from services.common.errors import ShunterError
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.gen.shunter.rollout.v1 import rollout_pb2 as opb
from services.registry import validation
from services.registry.rollout import records
from services.registry.rollout.judgement import Gates, Progress, Verdict, judge
from services.registry.rollout.window import read_window
from services.registry.store import REDIS_DOWN, RedisStore, now_ms

logger = logging.getLogger(__name__)

WEIGHT = Gauge("shunter_rollout_weight", "Canary percent of each model's running rollout.", ["model", "version"])
STATE = Gauge(
    "shunter_rollout_state",
    "State of each model's last rollout: 1 running, 2 paused, 3 promoted, 4 rolled back, 5 aborted.",
    ["model"],
)
DECISIONS = Counter("shunter_rollout_decisions", "Rollout decisions written, by verdict.", ["verdict"])
#: After a rollback, how long the canary stays loaded (at no weight) before it is archived.
ROLLBACK_ARCHIVE_DELAY_MS = 5000
LEADER = Gauge("shunter_rollout_controller_leader", "1 while this replica holds the rollout controller lease.")

_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local fence, holder = string.match(cur, '^(%d+):(.*)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(fence)
  end
  return 0
end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], fence .. ':' .. ARGV[1], 'PX', ARGV[2])
return fence
"""


@dataclass(frozen=True)
class ControllerSettings:
    #: Prefix of the routers' statistics keys (``version_windows.stats_prefix`` of their ``--key-prefix``).
    stats_prefix: str = "shunter:"
    #: How often the controller looks at running rollouts (and renews its lease).
    tick_s: float = 0.5
    #: Lease lifetime: a killed controller's successor takes over within it.
    lease_ttl_s: float = 5.0
    #: After a promotion, how long the old version stays loaded at weight 0.
    keep_baseline_s: float = 600.0
    #: Inconclusive windows in a row that pause a rollout (when a start gives none).
    max_inconclusive: int = 3


#: ``drift(version)`` -> the monitor's VersionDrift of one registry ModelVersion.
DriftSource = Callable[[rpb.ModelVersion], Awaitable[Any]]


async def drift_score(source: DriftSource | None, version: rpb.ModelVersion | None) -> float | None:
    """The canary's largest feature drift by its monitoring method (psi, js or ks), or None
    where there is no monitor, no reference profile or no scored window yet."""
    if source is None or version is None:
        return None
    try:
        result = await source(version)
    except Exception as exc:  # a monitor problem is missing evidence, never a failed step
        logger.debug("rollout: no drift for %s v%s: %s", version.model, version.version, exc)
        return None
    if not getattr(result, "scored", False) or not result.features:
        return None
    method = result.method if result.method in ("psi", "js", "ks") else "psi"
    return max(float(getattr(f, method)) for f in result.features)


class Stale(Exception):
    """The rollout changed, or the lease moved, since it was read: nothing was written."""


def judgement_gates(gates: opb.Gates) -> Gates:
    return Gates(
        max_error_rate_increase=gates.max_error_rate_increase, max_p99_ratio=gates.max_p99_ratio,
        max_drift=gates.max_drift, min_requests=gates.min_requests, failure_limit=gates.failure_limit,
        consecutive_failure_limit=gates.consecutive_failure_limit, max_inconclusive=gates.max_inconclusive,
    )


class RolloutController:
    def __init__(
        self, store: RedisStore, settings: ControllerSettings, stats_redis: Any = None,
        drift: DriftSource | None = None,
    ) -> None:
        self.store = store
        #: The canary's drift score, where the monitor has one (services/monitoring).
        self.drift = drift
        #: Where the routers' statistics are (a client of its own on a Redis Cluster).
        self.stats_redis = stats_redis if stats_redis is not None else store.redis
        self.settings = settings
        self.rkeys = records.RolloutKeys(store.keys)
        self.holder = secrets.token_hex(8)
        self.fence = 0
        self._acquire = store.redis.register_script(_ACQUIRE)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rollout-controller")

    async def close(self) -> None:
        await background.stop(self._task)  # bounded: Redis may be resetting connections
        self._task = None
        if self.fence:
            try:  # hand the lease over at once instead of after its TTL
                if await self.store.redis.get(self.rkeys.lease) == f"{self.fence}:{self.holder}".encode():
                    await self.store.redis.delete(self.rkeys.lease)
            except REDIS_DOWN:
                pass

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except REDIS_DOWN as exc:
                background.raise_if_cancelled()  # a cancel redis-py turned into ConnectionError
                LEADER.set(0)
                logger.debug("rollout controller: Redis unavailable (%s)", exc)
            except Exception:
                background.raise_if_cancelled()
                logger.exception("rollout controller: unexpected error")
            await asyncio.sleep(self.settings.tick_s)

    async def tick(self) -> None:
        """Take or renew the lease; as the holder, act on every rollout that is due."""
        fence = int(await self._acquire(
            [self.rkeys.lease, self.rkeys.fence], [self.holder, int(self.settings.lease_ttl_s * 1000)]
        ))
        if fence != self.fence:
            if fence:
                logger.info("rollout controller: this replica acts now (fencing token %d)", fence)
            self.fence = fence
        LEADER.set(1 if fence else 0)
        rollouts = await self.store.redis.hgetall(self.rkeys.rollouts)
        now = now_ms()
        for raw in rollouts.values():
            rollout = opb.Rollout.FromString(raw)
            self._export(rollout)
            if not fence:
                continue
            try:
                if rollout.state == opb.RUNNING and now >= rollout.next_judgement_at_ms:
                    await self.step(rollout, now)
                elif (rollout.state in (opb.PROMOTED, opb.ROLLED_BACK) and not rollout.retired
                      and now >= rollout.retire_at_ms):
                    await self.retire(rollout, now)
            except Stale as exc:
                logger.info("rollout controller: %s rollout changed under it (%s); reading again",
                            rollout.model, exc)
            except ShunterError as exc:
                logger.warning("rollout controller: %s: %s", rollout.model, exc.message)

    @staticmethod
    def _export(rollout: opb.Rollout) -> None:
        STATE.labels(rollout.model).set(rollout.state)
        weight = rollout.steps[rollout.step] if rollout.state in records.ACTIVE else (
            100 if rollout.state == opb.PROMOTED else 0)
        WEIGHT.labels(rollout.model, rollout.version).set(weight)

    # ---- the compare-and-set ---------------------------------------------------------

    async def _check(self, pipe: Any, expected: opb.Rollout) -> opb.Rollout:
        """Inside a transaction: the lease is still ours and the rollout unchanged."""
        await pipe.watch(self.rkeys.lease)
        if await pipe.get(self.rkeys.lease) != f"{self.fence}:{self.holder}".encode():
            raise Stale("the controller lease moved to another replica")
        current = await records.read_rollout(pipe, self.rkeys, expected.model)
        if current is None or current.revision != expected.revision:
            raise Stale(f"revision {expected.revision} is no longer current")
        if current.fence > self.fence:
            raise Stale(f"written by a newer controller (fence {current.fence})")
        return current

    async def _write(self, prepare: Any) -> Any:
        """One transaction of the store; ``prepare`` raises Stale when the CAS fails."""
        result, _revision = await self.store.transact(prepare)
        return result

    # ---- one judgement ---------------------------------------------------------------

    async def step(self, rollout: opb.Rollout, now: int) -> opb.Decision:
        windows = await read_window(
            self.stats_redis, self.settings.stats_prefix, rollout.model, [rollout.baseline, rollout.version],
            rollout.window_start_ms, now,
        )
        progress = Progress(tuple(rollout.steps), rollout.step, rollout.failures, rollout.consecutive_failures,
                            rollout.inconclusive)
        catalogue = self.store.catalogue
        canary = catalogue.versions.get(rollout.model, {}).get(rollout.version) if catalogue else None
        drift = await drift_score(self.drift, canary)
        result = judge(progress, judgement_gates(rollout.gates), windows[rollout.baseline], windows[rollout.version],
                       drift)
        model, version, baseline = rollout.model, rollout.version, rollout.baseline

        async def prepare(pipe: Any) -> tuple[opb.Decision, Any]:
            await self._check(pipe, rollout)
            versions = await records.read_versions(pipe, self.store.keys, model)
            before = await records.read_policy(pipe, self.store.keys, model)
            after = opb.Rollout()
            after.CopyFrom(rollout)
            after.revision = rollout.revision + 1
            after.fence = self.fence
            after.updated_at_ms = now
            after.step, after.failures = result.progress.step, result.progress.failures
            after.consecutive_failures = result.progress.consecutive_failures
            after.inconclusive = result.progress.inconclusive
            after.next_judgement_at_ms = now + int(rollout.interval_s * 1000)
            if result.verdict is not Verdict.HOLD or result.outcome == "fail":
                after.window_start_ms = now  # a fresh window after anything but an inconclusive hold
            policy: rpb.TrafficPolicy | None = None
            if result.verdict is Verdict.ADVANCE:
                weight = result.progress.weight
                policy = records.split_policy(before, model, {baseline: 100 - weight, version: weight})
            elif result.verdict is Verdict.PROMOTE:
                policy = records.split_policy(before, model, {version: 100})
                after.state, after.finished_at_ms = opb.PROMOTED, now
                after.retire_at_ms = now + int(self.settings.keep_baseline_s * 1000)
                after.reason = f"promoted: version {version} is production; {baseline} kept at weight 0"
            elif result.verdict is Verdict.ROLLBACK:
                policy = records.without_version(records.split_policy(before, model, {baseline: 100}), version)
                # Archived a moment later (retire): archiving now would have workers unload it
                # while routers still send it the requests they chose before the new table.
                after.retire_at_ms = now + ROLLBACK_ARCHIVE_DELAY_MS
                after.state, after.finished_at_ms = opb.ROLLED_BACK, now
                after.reason = "rolled back: " + "; ".join(result.reasons)
            elif result.verdict is Verdict.PAUSE:
                after.state = opb.PAUSED
                after.reason = "paused: " + "; ".join(result.reasons)
            decision = opb.Decision(
                model=model, version=version, baseline=baseline, at_ms=now, step=rollout.step,
                weight=rollout.steps[rollout.step], verdict=str(result.verdict), outcome=str(result.outcome),
                reasons=list(result.reasons), window_start_ms=rollout.window_start_ms, window_end_ms=now,
                evidence=records.evidence_struct(result.evidence), gates=rollout.gates,
                rollout_revision=after.revision, fence=self.fence, actor="controller",
            )

            def queue(p: Any) -> None:
                p.hset(self.rkeys.rollouts, model, after.SerializeToString())
                records.queue_decision(p, self.rkeys, decision)
                if policy is not None:
                    records.queue_policy_change(
                        p, self.rkeys, model, before, policy, versions, who="controller",
                        action=f"rollout-{result.verdict}", reason="; ".join(result.reasons), at_ms=now,
                    )

            return decision, queue

        decision = await self._write(prepare)
        DECISIONS.labels(decision.verdict).inc()
        logger.info("rollout %s v%s at %d%%: %s (%s)", model, version, decision.weight, decision.verdict,
                    "; ".join(decision.reasons))
        return decision

    async def retire(self, rollout: opb.Rollout, now: int) -> None:
        """Archive the version that lost its traffic (the old one after a promotion, the canary
        after a rollback), unless it takes traffic again."""
        model = rollout.model
        target_version = rollout.baseline if rollout.state == opb.PROMOTED else rollout.version

        async def prepare(pipe: Any) -> tuple[None, Any]:
            await self._check(pipe, rollout)
            versions = await records.read_versions(pipe, self.store.keys, model)
            policy = await records.read_policy(pipe, self.store.keys, model)
            after = opb.Rollout()
            after.CopyFrom(rollout)
            after.revision, after.fence, after.updated_at_ms = rollout.revision + 1, self.fence, now
            after.retired = True
            keep = policy is not None and bool(validation.traffic_roles(policy, target_version))
            target = versions.get(target_version)

            def queue(p: Any) -> None:
                p.hset(self.rkeys.rollouts, model, after.SerializeToString())
                if target is not None and not keep and target.state != rpb.ARCHIVED:
                    archived = rpb.ModelVersion()
                    archived.CopyFrom(target)
                    archived.state = rpb.ARCHIVED
                    p.hset(self.store.keys.versions(model), target_version, archived.SerializeToString())
                records.queue_decision(p, self.rkeys, opb.Decision(
                    model=model, version=rollout.version, baseline=rollout.baseline, at_ms=now, verdict="archive",
                    reasons=[f"version {target_version} "
                             f"{'kept: it takes traffic again' if keep else 'archived'}"],
                    rollout_revision=after.revision, fence=self.fence, actor="controller",
                ))

            return None, queue

        await self._write(prepare)
        logger.info("rollout %s: version %s retired", model, target_version)
