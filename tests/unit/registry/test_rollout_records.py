"""States follow the policy, and the policy edits a rollout makes (records.py)."""

from __future__ import annotations

from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.registry.rollout.records import implied_state, leading_version, split_policy, without_version


def policy(weights: dict[str, int], **fields: str) -> rpb.TrafficPolicy:
    return rpb.TrafficPolicy(model="m", weights=weights, **fields)


def test_the_largest_weight_is_production_others_canary_shadow_and_staged() -> None:
    p = policy({"1": 80, "2": 20}, shadow_version="3", fallback_version="4")
    assert [implied_state(p, v, rpb.STAGED) for v in "12345"] == [
        rpb.PRODUCTION, rpb.CANARY, rpb.SHADOW, rpb.STAGED, rpb.STAGED]
    assert implied_state(p, "1", rpb.ARCHIVED) == rpb.ARCHIVED  # never un-archived by a policy
    assert implied_state(None, "1", rpb.PRODUCTION) == rpb.STAGED


def test_ties_go_to_the_highest_version() -> None:
    assert leading_version(policy({"2": 50, "10": 50})) == "10"
    assert leading_version(policy({})) == ""


def test_a_split_keeps_the_other_options_and_drops_a_weighted_shadow() -> None:
    base = policy({"1": 100}, sticky_header="x-user-id", shadow_version="2", fallback_version="1")
    split = split_policy(base, "m", {"1": 95, "2": 5})
    assert dict(split.weights) == {"1": 95, "2": 5} and split.sticky_header == "x-user-id"
    assert split.shadow_version == "" and split.fallback_version == "1"
    assert dict(split_policy(None, "m", {"1": 100, "2": 0}).weights) == {"1": 100}


def test_without_version_clears_every_role() -> None:
    cleared = without_version(policy({"1": 90, "2": 10}, shadow_version="2", fallback_version="2"), "2")
    assert dict(cleared.weights) == {"1": 90} and not cleared.shadow_version and not cleared.fallback_version


async def test_drift_score_is_the_largest_feature_score_by_the_method() -> None:
    from services.gen.shunter.monitor.v1 import monitor_pb2 as mpb
    from services.registry.rollout.controller import drift_score

    version = rpb.ModelVersion(model="m", version="2")
    scored = mpb.VersionDrift(scored=True, method="js", features=[
        mpb.FeatureScore(feature="a", psi=0.9, js=0.1), mpb.FeatureScore(feature="b", psi=0.1, js=0.3)])

    async def source(v):
        return scored

    async def failing(v):
        raise RuntimeError("monitor down")

    async def unscored(v):
        return mpb.VersionDrift(scored=False, note="no window yet")

    assert await drift_score(source, version) == 0.3
    assert await drift_score(failing, version) is None
    assert await drift_score(unscored, version) is None
    assert await drift_score(None, version) is None
