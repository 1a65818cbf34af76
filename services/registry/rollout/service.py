"""The ``shunter.rollout.v1.Rollouts`` servicer: rollouts, blue-green, the audit log.

Served by the registry process with the registry's admin-key authorisation. Every write is
one optimistic transaction of the store (``RedisStore.transact``): it validates against
what Redis holds, then writes the rollout record, its decision, the policy, the versions'
states and the audit entry together, or nothing.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

import grpc

from services.common import edge
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.gen.shunter.rollout.v1 import rollout_pb2 as opb
from services.registry import validation
from services.registry.rollout import records
from services.registry.rollout.controller import DECISIONS, ControllerSettings
from services.registry.service import RegistryService, admin_rpc
from services.registry.store import REDIS_DOWN, now_ms

logger = logging.getLogger(__name__)

SERVICE_NAME = opb.DESCRIPTOR.services_by_name["Rollouts"].full_name
DEFAULT_STEPS = (5, 25, 50, 100)
DEFAULT_INTERVAL_S = 30.0
MIN_INTERVAL_S = 1.0
#: The longest window a report reads (the per-minute statistics live 25 h).
MAX_REPORT_WINDOW_S = 24 * 3600
DEFAULT_GATES = {
    "max_error_rate_increase": 0.01, "max_p99_ratio": 1.5, "max_drift": 0.2, "min_requests": 200,
    "failure_limit": 1, "consecutive_failure_limit": 1,
}


def check_steps(steps: list[int]) -> list[int]:
    if not steps:
        return list(DEFAULT_STEPS)
    for step in steps:
        if not 1 <= step <= 100:
            raise InvalidArgument(f"step {step} is not a percent between 1 and 100")
    for earlier, later in itertools.pairwise(steps):
        if later <= earlier:
            raise InvalidArgument(f"steps must increase: {later} comes after {earlier}")
    return list(steps)


def check_gates(gates: opb.Gates, max_inconclusive: int) -> opb.Gates:
    """A copy with every gate set (defaults for unset ones), each within its range."""
    out = opb.Gates()
    out.CopyFrom(gates)
    for name, default in DEFAULT_GATES.items():
        if not out.HasField(name):
            setattr(out, name, default)
    if not out.HasField("max_inconclusive"):
        out.max_inconclusive = max_inconclusive
    if not (math.isfinite(out.max_error_rate_increase) and 0 <= out.max_error_rate_increase < 1):
        raise InvalidArgument(f"max error rate increase {out.max_error_rate_increase} must be in [0, 1)")
    if not (math.isfinite(out.max_p99_ratio) and out.max_p99_ratio >= 1):
        raise InvalidArgument(f"max p99 ratio {out.max_p99_ratio} must be at least 1")
    if not (math.isfinite(out.max_drift) and out.max_drift >= 0):
        raise InvalidArgument(f"max drift {out.max_drift} must be 0 or more")
    for name in ("min_requests", "failure_limit", "consecutive_failure_limit", "max_inconclusive"):
        if getattr(out, name) < 1:
            raise InvalidArgument(f"{name.replace('_', ' ')} must be at least 1")
    return out


class RolloutService:
    def __init__(self, registry: RegistryService, settings: ControllerSettings, stats_redis: Any = None) -> None:
        self.registry = registry
        self.stats_redis = stats_redis if stats_redis is not None else registry.store.redis
        self.store = registry.store
        self.keys = registry.store.keys
        self.rkeys = records.RolloutKeys(registry.store.keys)
        self.settings = settings

    # admin_rpc reads these off the servicer it wraps.
    @property
    def draining(self) -> bool:
        return self.registry.draining

    async def authorise(self, context: grpc.aio.ServicerContext, method: str) -> rpb.ApiKey:
        """Only admin keys: no service role (router, worker) may change or read rollouts."""
        return await self.registry.authorise(context, method)

    def handler(self) -> grpc.GenericRpcHandler:
        service = opb.DESCRIPTOR.services_by_name["Rollouts"]
        # The registry's own edge: the same RPC metrics and interceptors as its other service.
        return self.registry.edge.handler(service.full_name, edge.generated_methods(service, self))

    async def _list(self, key: str) -> list[bytes]:
        try:
            return await self.store.redis.lrange(key, 0, -1)
        except REDIS_DOWN as exc:
            raise self.store.unavailable(exc) from None

    async def _ready(self, model: str) -> set[str]:
        catalogue = await self.store.current(force=True)
        return records.ready_versions(catalogue.workers.values(), model)

    # ---- rollouts ----------------------------------------------------------------------

    @admin_rpc
    async def StartRollout(self, request, context, caller):
        model = validation.check_name(request.model)
        version = validation.check_version(request.version)
        steps = check_steps(list(request.steps))
        interval_s = request.interval_s or DEFAULT_INTERVAL_S
        if not math.isfinite(interval_s) or interval_s < MIN_INTERVAL_S:
            raise InvalidArgument(f"interval {interval_s:g} s is under the minimum of {MIN_INTERVAL_S:g} s")
        gates = check_gates(request.gates, self.settings.max_inconclusive)
        if request.baseline:
            validation.check_version(request.baseline, "baseline")
        ready = await self._ready(model)
        now = now_ms()

        async def prepare(pipe: Any) -> tuple[opb.Rollout, Any]:
            versions = await records.read_versions(pipe, self.keys, model)
            if not versions:
                raise NotFound(f"model {model!r} is not registered")
            if version not in versions:
                raise NotFound(f"version {version} of model {model!r} is not registered")
            if versions[version].state == rpb.ARCHIVED:
                raise FailedPrecondition(f"version {version} of model {model!r} is archived")
            current = await records.read_rollout(pipe, self.rkeys, model)
            if current is not None and current.state in records.ACTIVE:
                raise AlreadyExists(
                    f"a rollout of {model} to version {current.version} is {records.STATE_NAMES[current.state]}; "
                    f"abort it first (shunter rollout abort {model})"
                )
            before = await records.read_policy(pipe, self.keys, model)
            baseline = request.baseline or (records.leading_version(before) if before else "")
            if not baseline:
                raise FailedPrecondition(f"model {model!r} has no version with weight; give --baseline")
            if baseline == version:
                raise InvalidArgument(f"version {version} is already the baseline (the version at the highest weight)")
            if baseline not in versions or versions[baseline].state == rpb.ARCHIVED:
                raise NotFound(f"baseline version {baseline} of model {model!r} is not registered or archived")
            for needed in (version, baseline):
                if needed not in ready:
                    raise FailedPrecondition(
                        f"no worker reports {model} version {needed} ready; load it before routing to it"
                    )
            rollout = opb.Rollout(
                model=model, version=version, baseline=baseline, steps=steps, step=0, interval_s=interval_s,
                gates=gates, state=opb.RUNNING, revision=(current.revision if current else 0) + 1,
                started_by=caller.key_id, started_at_ms=now, updated_at_ms=now, window_start_ms=now,
                next_judgement_at_ms=now + int(interval_s * 1000),
            )
            policy = records.split_policy(before, model, {baseline: 100 - steps[0], version: steps[0]})
            decision = opb.Decision(
                model=model, version=version, baseline=baseline, at_ms=now, step=0, weight=steps[0],
                verdict="start", reasons=[f"started by {caller.key_id}: {steps[0]}% to version {version}"],
                gates=gates, rollout_revision=rollout.revision, actor=caller.key_id,
            )

            def queue(p: Any) -> None:
                p.hset(self.rkeys.rollouts, model, rollout.SerializeToString())
                records.queue_decision(p, self.rkeys, decision)
                records.queue_policy_change(p, self.rkeys, model, before, policy, versions or {}, who=caller.key_id,
                                            action="rollout-start", reason=decision.reasons[0], at_ms=now)

            return rollout, queue

        rollout, revision = await self.store.transact(prepare)
        DECISIONS.labels("start").inc()
        logger.info("registry: %s started a rollout of %s version %s over %s (steps %s, every %g s)",
                    caller.key_id, model, version, rollout.baseline, steps, interval_s)
        self.registry._revision(context, revision)
        return rollout

    @admin_rpc
    async def GetRollout(self, request, context, caller):
        model = validation.check_name(request.model)
        try:
            rollout = await records.read_rollout(self.store.redis, self.rkeys, model)
        except REDIS_DOWN as exc:
            raise self.store.unavailable(exc) from None
        if rollout is None:
            raise NotFound(f"model {model!r} has no rollout")
        return rollout

    async def _operator_change(self, request, context, caller, verdict: str) -> opb.Rollout:
        model = validation.check_name(request.model)
        now = now_ms()

        async def prepare(pipe: Any) -> tuple[opb.Rollout, Any]:
            rollout = await records.read_rollout(pipe, self.rkeys, model)
            if rollout is None or rollout.state not in records.ACTIVE:
                what = ("no rollout" if rollout is None
                        else f"no running rollout (the last one {records.STATE_NAMES[rollout.state]})")
                raise FailedPrecondition(f"model {model!r} has {what}; nothing to {verdict}")
            if verdict == "pause" and rollout.state == opb.PAUSED:
                raise FailedPrecondition(f"the rollout of {model} is already paused")
            if verdict == "resume" and rollout.state == opb.RUNNING:
                raise FailedPrecondition(f"the rollout of {model} is running, not paused")
            after = opb.Rollout()
            after.CopyFrom(rollout)
            after.revision, after.updated_at_ms = rollout.revision + 1, now
            policy = before = versions = None
            overrides: dict[str, int] = {}
            if verdict == "pause":
                after.state, after.reason = opb.PAUSED, f"paused by {caller.key_id}"
            elif verdict == "resume":
                after.state, after.reason = opb.RUNNING, f"resumed by {caller.key_id}"
                after.inconclusive, after.window_start_ms = 0, now
                after.next_judgement_at_ms = now + int(rollout.interval_s * 1000)
            else:  # abort: no canary weight is left behind
                versions = await records.read_versions(pipe, self.keys, model)
                before = await records.read_policy(pipe, self.keys, model)
                policy = records.without_version(records.split_policy(before, model, {rollout.baseline: 100}),
                                                 rollout.version)
                after.state, after.finished_at_ms = opb.ABORTED, now
                after.reason = f"aborted by {caller.key_id}: version {rollout.baseline} back to 100%"
            decision = opb.Decision(
                model=model, version=rollout.version, baseline=rollout.baseline, at_ms=now, step=rollout.step,
                weight=rollout.steps[rollout.step], verdict=verdict, reasons=[after.reason],
                rollout_revision=after.revision, actor=caller.key_id,
            )

            def queue(p: Any) -> None:
                p.hset(self.rkeys.rollouts, model, after.SerializeToString())
                records.queue_decision(p, self.rkeys, decision)
                if policy is not None:
                    records.queue_policy_change(p, self.rkeys, model, before, policy, versions or {}, who=caller.key_id,
                                                action="rollout-abort", reason=after.reason, at_ms=now,
                                                overrides=overrides)

            return after, queue

        rollout, revision = await self.store.transact(prepare)
        DECISIONS.labels(verdict).inc()
        logger.info("registry: %s: rollout of %s %s", caller.key_id, model, verdict)
        self.registry._revision(context, revision)
        return rollout

    @admin_rpc
    async def PauseRollout(self, request, context, caller):
        return await self._operator_change(request, context, caller, "pause")

    @admin_rpc
    async def ResumeRollout(self, request, context, caller):
        return await self._operator_change(request, context, caller, "resume")

    @admin_rpc
    async def AbortRollout(self, request, context, caller):
        return await self._operator_change(request, context, caller, "abort")

    @admin_rpc
    async def RolloutHistory(self, request, context, caller):
        model = validation.check_name(request.model)
        raw = await self._list(self.rkeys.history(model))
        return opb.RolloutHistoryResponse(decisions=[opb.Decision.FromString(r) for r in raw])

    # ---- blue-green --------------------------------------------------------------------

    @admin_rpc
    async def SwitchTraffic(self, request, context, caller):
        model = validation.check_name(request.model)
        version = validation.check_version(request.version)
        ready = await self._ready(model)
        now = now_ms()

        async def prepare(pipe: Any) -> tuple[rpb.TrafficPolicy, Any]:
            versions = await records.read_versions(pipe, self.keys, model)
            if not versions:
                raise NotFound(f"model {model!r} is not registered")
            if version not in versions:
                raise NotFound(f"version {version} of model {model!r} is not registered")
            await self._refuse_during_rollout(pipe, model, "switch")
            before = await records.read_policy(pipe, self.keys, model)
            if version not in ready:
                raise FailedPrecondition(f"no worker reports {model} version {version} ready; load it before "
                                         "switching traffic to it")
            policy = validation.check_policy(records.split_policy(before, model, {version: 100}), versions)

            def queue(p: Any) -> None:
                records.queue_policy_change(p, self.rkeys, model, before, policy, versions or {}, who=caller.key_id,
                                            action="switch", reason=f"100% to version {version}", at_ms=now)

            return policy, queue

        policy, revision = await self.store.transact(prepare)
        logger.info("registry: %s switched %s to version %s", caller.key_id, model, version)
        self.registry._revision(context, revision)
        return policy

    @admin_rpc
    async def RollbackTraffic(self, request, context, caller):
        model = validation.check_name(request.model)
        ready = await self._ready(model)
        now = now_ms()

        async def prepare(pipe: Any) -> tuple[rpb.TrafficPolicy, Any]:
            versions = await records.read_versions(pipe, self.keys, model)
            if not versions:
                raise NotFound(f"model {model!r} is not registered")
            await self._refuse_during_rollout(pipe, model, "roll back")
            last = await pipe.lindex(self.rkeys.audit(model), -1)
            change = opb.PolicyChange.FromString(last) if last else None
            if change is None or not change.HasField("before") or not change.before.weights:
                raise FailedPrecondition(f"model {model!r} has no earlier traffic policy to restore")
            before = await records.read_policy(pipe, self.keys, model)
            restored = validation.check_policy(change.before, versions)
            missing = sorted(v for v, w in restored.weights.items() if w and v not in ready)
            if missing:
                raise FailedPrecondition(
                    f"no worker reports {model} version(s) {', '.join(missing)} ready; cannot restore the policy "
                    f"of {change.at_ms}")

            def queue(p: Any) -> None:
                records.queue_policy_change(p, self.rkeys, model, before, restored, versions, who=caller.key_id,
                                            action="rollback", reason=f"restored the policy before the last "
                                            f"change ({change.action} by {change.who})", at_ms=now)

            return restored, queue

        policy, revision = await self.store.transact(prepare)
        logger.info("registry: %s rolled %s back to %s", caller.key_id, model, dict(policy.weights))
        self.registry._revision(context, revision)
        return policy

    async def _refuse_during_rollout(self, pipe: Any, model: str, what: str) -> None:
        rollout = await records.read_rollout(pipe, self.rkeys, model)
        if rollout is not None and rollout.state in records.ACTIVE:
            raise FailedPrecondition(
                f"a rollout of {model} to version {rollout.version} is {records.STATE_NAMES[rollout.state]}; "
                f"abort it before you {what} (shunter rollout abort {model})"
            )

    @admin_rpc
    async def TrafficHistory(self, request, context, caller):
        model = validation.check_name(request.model)
        raw = await self._list(self.rkeys.audit(model))
        return opb.TrafficHistoryResponse(changes=[opb.PolicyChange.FromString(r) for r in raw])

    # ---- reports -----------------------------------------------------------------------

    async def _report_window(self, request: Any) -> tuple[str, Any, int, int]:
        """A report request's model (registered, not archived) and its window in ms: the last
        ``since_s`` seconds (an hour by default, at most MAX_REPORT_WINDOW_S)."""
        model = validation.check_name(request.model)
        since_s = request.since_s or 3600.0
        if not math.isfinite(since_s) or not 1 <= since_s <= MAX_REPORT_WINDOW_S:
            raise InvalidArgument(f"--since {since_s:g} s must be between 1 s and {MAX_REPORT_WINDOW_S // 3600} h")
        catalogue = await self.store.current()
        found = catalogue.model(model, include_archived=False)
        if found is None:
            raise NotFound(f"model {model!r} is not registered")
        end = now_ms()
        return model, found, end - int(since_s * 1000), end

    @admin_rpc
    async def ExperimentReport(self, request, context, caller):
        from services.registry.rollout import experiment
        from services.registry.rollout.window import read_window

        model, found, start, end = await self._report_window(request)
        weights = dict(found.policy.weights)
        versions = sorted({v.version for v in found.versions} | set(weights))
        try:
            windows = await read_window(self.stats_redis, self.settings.stats_prefix, model, versions, start, end)
        except REDIS_DOWN as exc:
            raise self.store.unavailable(exc) from None
        windows = {v: w for v, w in windows.items() if w.requests or weights.get(v)}
        control = records.leading_version(found.policy)
        variants, comparisons = experiment.report(windows, weights, control)
        return opb.ExperimentReportResponse(
            model=model, window_start_ms=start, window_end_ms=end, control=control,
            variants=[opb.VariantStats(**vars(v)) for v in variants],
            comparisons=[opb.Comparison(**vars(c)) for c in comparisons],
        )

    @admin_rpc
    async def ShadowReport(self, request, context, caller):
        from services.registry.rollout.shadow_report import summarise
        from services.registry.rollout.window import read_shadow_window

        model, found, start, end = await self._report_window(request)
        versions = sorted({v.version for v in found.versions})
        try:
            stats, samples = await read_shadow_window(self.stats_redis, self.settings.stats_prefix, model, versions,
                                                      start, end)
        except REDIS_DOWN as exc:
            raise self.store.unavailable(exc) from None
        shadow = found.policy.shadow_version
        shown = [v for v in versions if stats[v].compared or v == shadow]
        response = opb.ShadowReportResponse(model=model, window_start_ms=start, window_end_ms=end,
                                            shadow_version=shadow)
        for version in shown:
            fields = summarise(version, stats[version], samples[version])
            entry = response.versions.add(**{k: v for k, v in fields.items() if k not in ("max_abs_diff", "samples")})
            for bucket in fields["max_abs_diff"]:
                entry.max_abs_diff.add(**bucket)
            for sample in fields["samples"]:
                entry.samples.append(records.evidence_struct(sample))
        return response
