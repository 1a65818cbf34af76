"""Where rollouts, decisions and the traffic audit log live in Redis, and the writes that
change a model's traffic: every policy change goes through ``queue_policy_change``, so it
is audited (who, when, before, after) and the versions' states follow the policy.

States follow traffic (issue 19 §4): after every policy write, the version with the
largest weight is ``production``, any other weighted version ``canary``, the shadow
version ``shadow``, and a version that lost its traffic ``staged`` (loaded, reachable only
by naming it). ``archived`` is only ever set explicitly (and only on a version without
traffic).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format

from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.gen.shunter.rollout.v1 import rollout_pb2 as opb
from services.registry.scripts import KeyLayout

#: Entries kept per model in the decision history and the audit log.
MAX_ENTRIES = 1000
ACTIVE = (opb.RUNNING, opb.PAUSED)
STATE_NAMES = {
    opb.RUNNING: "running", opb.PAUSED: "paused", opb.PROMOTED: "promoted",
    opb.ROLLED_BACK: "rolled back", opb.ABORTED: "aborted",
}


class RolloutKeys:
    """Key names under the registry's prefix (``shunter:registry:`` by default)."""

    def __init__(self, keys: KeyLayout) -> None:
        self.registry = keys
        self.rollouts = keys.prefix + "rollouts"              # hash: model -> Rollout
        self.lease = keys.prefix + "rollout_lease"            # string: "<fence>:<holder>", PX
        self.fence = keys.prefix + "rollout_fence"            # counter: fencing tokens

    def history(self, model: str) -> str:
        return f"{self.registry.prefix}rollout_history:{model}"    # list of Decision

    def audit(self, model: str) -> str:
        return f"{self.registry.prefix}traffic_audit:{model}"      # list of PolicyChange


def leading_version(policy: rpb.TrafficPolicy) -> str:
    """The version with the largest weight (ties: the highest number); "" if none."""
    weighted = [(w, int(v) if v.isdigit() else 0, v) for v, w in policy.weights.items() if w > 0]
    return max(weighted)[2] if weighted else ""


def implied_state(policy: rpb.TrafficPolicy | None, number: str, current: int) -> int:
    """The state ``policy`` gives version ``number`` (``current`` if it is archived)."""
    if current == rpb.ARCHIVED:
        return current
    if policy is not None and policy.weights.get(number, 0) > 0:
        return rpb.PRODUCTION if leading_version(policy) == number else rpb.CANARY
    if policy is not None and policy.shadow_version == number:
        return rpb.SHADOW
    return rpb.STAGED


def queue_states(pipe: Any, keys: KeyLayout, model: str, versions: dict[str, rpb.ModelVersion],
                 policy: rpb.TrafficPolicy, overrides: dict[str, int] | None = None) -> None:
    """Write the states ``policy`` implies (and ``overrides``, e.g. archived) where they change."""
    overrides = overrides or {}
    for number, version in versions.items():
        state = overrides.get(number, implied_state(policy, number, version.state))
        if state != version.state:
            changed = rpb.ModelVersion()
            changed.CopyFrom(version)
            changed.state = state
            pipe.hset(keys.versions(model), number, changed.SerializeToString())


def queue_policy_change(
    pipe: Any, rkeys: RolloutKeys, model: str, before: rpb.TrafficPolicy | None, after: rpb.TrafficPolicy,
    versions: dict[str, rpb.ModelVersion], *, who: str, action: str, reason: str, at_ms: int,
    overrides: dict[str, int] | None = None,
) -> None:
    """Queue a policy write with its audit entry and the states it implies (one MULTI)."""
    keys = rkeys.registry
    pipe.hset(keys.policies, model, after.SerializeToString())
    queue_states(pipe, keys, model, versions, after, overrides)
    change = opb.PolicyChange(model=model, at_ms=at_ms, who=who, action=action, reason=reason, after=after)
    if before is not None:
        change.before.CopyFrom(before)
    pipe.rpush(rkeys.audit(model), change.SerializeToString())
    pipe.ltrim(rkeys.audit(model), -MAX_ENTRIES, -1)


def queue_decision(pipe: Any, rkeys: RolloutKeys, decision: opb.Decision) -> None:
    pipe.rpush(rkeys.history(decision.model), decision.SerializeToString())
    pipe.ltrim(rkeys.history(decision.model), -MAX_ENTRIES, -1)


async def read_versions(pipe: Any, keys: KeyLayout, model: str) -> dict[str, rpb.ModelVersion]:
    raw = await pipe.hgetall(keys.versions(model))
    return {k.decode(): rpb.ModelVersion.FromString(v) for k, v in raw.items()}


async def read_policy(pipe: Any, keys: KeyLayout, model: str) -> rpb.TrafficPolicy | None:
    raw = await pipe.hget(keys.policies, model)
    return rpb.TrafficPolicy.FromString(raw) if raw else None


async def read_rollout(pipe: Any, rkeys: RolloutKeys, model: str) -> opb.Rollout | None:
    raw = await pipe.hget(rkeys.rollouts, model)
    return opb.Rollout.FromString(raw) if raw else None


def split_policy(base: rpb.TrafficPolicy | None, model: str, weights: dict[str, int]) -> rpb.TrafficPolicy:
    """``base`` (sticky header, fallback, cache, shadow kept) with only ``weights``."""
    policy = rpb.TrafficPolicy(model=model)
    if base is not None:
        policy.CopyFrom(base)
        policy.ClearField("weights")
    policy.model = model
    policy.weights.update({v: w for v, w in weights.items() if w > 0})
    if policy.shadow_version in policy.weights:
        policy.shadow_version = ""  # a shadow gets mirrored traffic only
    return policy


def without_version(policy: rpb.TrafficPolicy, version: str) -> rpb.TrafficPolicy:
    """``policy`` with every role of ``version`` cleared (before archiving it)."""
    clean = rpb.TrafficPolicy()
    clean.CopyFrom(policy)
    clean.weights.pop(version, None)
    if clean.shadow_version == version:
        clean.shadow_version = ""
    if clean.fallback_version == version:
        clean.fallback_version = ""
    return clean


def ready_versions(workers: Iterable[rpb.Worker], model: str) -> set[str]:
    """Versions of ``model`` that some live worker reports ready."""
    return {s.version for w in workers for s in w.versions if s.model == model and s.ready}


def to_dict(message: Any) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def evidence_struct(evidence: dict[str, Any]) -> Any:
    from google.protobuf import struct_pb2

    struct = struct_pb2.Struct()
    # Through JSON: None stays null, ints become numbers.
    struct.update(json.loads(json.dumps(evidence)))
    return struct
