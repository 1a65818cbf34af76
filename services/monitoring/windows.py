"""Cluster-wide drift: profiles and window counts in Redis, and the scores made from them.

Keys, under the registry's ``--key-prefix`` (default ``shunter:``) plus ``registry:monitor:``:

- ``profile:{model}:{version}``: the ReferenceProfile (serialised proto);
- ``counts:{model}:{version}:{profile_id}:{window_s}:{window}``: hash of flat bin index
  -> count, plus ``rows``; every worker's report for the window is added into it with
  HINCRBY, all in one pipelined round trip per report;
- ``windows:{model}:{version}:{profile_id}``: sorted set of ``{window_s}:{window}`` by the
  window's end (unix ms), to find the latest complete window.

On a Redis Cluster they carry the registry's hash tag (``{shunter:registry}:monitor:profile:...``).

Counts expire after COUNTS_TTL_S. Counts are tied to a profile id, so replacing a
baseline starts from empty windows instead of mixing two sets of bins.

``drift_score(redis, model, version)`` (or ``version_drift(redis, model_version)``, which
reads the settings from the version's config.yaml) is the entry point for readers that
are not the Monitor service (the rollout controller's gate): the latest complete
window's scores per feature, most drifted first.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from services.common.errors import ModelConfigError
from services.common.model_config import parse_model_config
from services.common.monitoring_config import DriftConfig
from services.common.redis_connect import hash_tagged
from services.gen.shunter.monitor.v1 import monitor_pb2 as mpb
from services.gen.shunter.registry.v1 import registry_pb2 as rpb
from services.monitoring import stats
from services.monitoring.profile import BinCounter, Profile

#: A redis.asyncio client (services/common/redis_connect.connect) on the registry's Redis.
Redis = Any
COUNTS_TTL_S = 7 * 24 * 3600
DEFAULT_PREFIX = "shunter:"


def report_tick_s(window_s: float) -> float:
    """How often a worker's reporter looks for finished windows (reporter.py)."""
    return min(5.0, max(0.2, window_s / 4))


def report_grace_s(window_s: float) -> float:
    """How long after a window's end its counts may still be arriving from workers: a
    reporter tick plus a second for the RPC. A window is scored only after that, so a
    score never comes from a window some workers have not reported yet."""
    return report_tick_s(window_s) + 1.0


class Keys:
    """The monitor's keys live under the registry's own (``shunter:registry:monitor:...``),
    so the Redis user the registry runs as (``~shunter:registry:*``, services/cli/up_redis.py
    and deploy/) covers them; on a Redis Cluster they carry the registry's hash tag
    (``{shunter:registry}:monitor:...``) and share its slot."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, *, cluster: bool = False) -> None:
        if prefix and not prefix.endswith(":"):
            prefix += ":"
        registry = prefix + "registry:"
        self.base = (hash_tagged(registry) if cluster else registry) + "monitor:"

    def profile(self, model: str, version: str) -> str:
        return f"{self.base}profile:{model}:{version}"

    def counts(self, model: str, version: str, profile_id: str, window_s: float, window: int) -> str:
        return f"{self.base}counts:{model}:{version}:{profile_id}:{window_s:g}:{window}"

    def windows(self, model: str, version: str, profile_id: str) -> str:
        return f"{self.base}windows:{model}:{version}:{profile_id}"


async def store_profile(redis: Redis, keys: Keys, profile: mpb.ReferenceProfile) -> None:
    await redis.set(keys.profile(profile.model, profile.version), profile.SerializeToString())


async def load_profile(redis: Redis, keys: Keys, model: str, version: str) -> mpb.ReferenceProfile | None:
    data = await redis.get(keys.profile(model, version))
    return mpb.ReferenceProfile.FromString(data) if data else None


async def add_counts(redis: Redis, keys: Keys, report: mpb.DriftCounts) -> None:
    """Add one worker's window counts to the cluster's: one pipelined round trip."""
    key = keys.counts(report.model, report.version, report.profile_id, report.window_s, report.window)
    index = keys.windows(report.model, report.version, report.profile_id)
    counts = np.asarray(report.counts, dtype=np.int64)
    end_ms = int((report.window + 1) * report.window_s * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for bin_index in np.flatnonzero(counts).tolist():
            pipe.hincrby(key, str(bin_index), int(counts[bin_index]))
        pipe.hincrby(key, "rows", int(report.rows))
        pipe.expire(key, COUNTS_TTL_S)
        pipe.zadd(index, {f"{report.window_s:g}:{report.window}": end_ms})
        pipe.expire(index, COUNTS_TTL_S)
        await pipe.execute()


def _member_window(member: bytes | str) -> tuple[float, int]:
    text = member.decode() if isinstance(member, bytes) else member
    window_s, window = text.split(":")
    return float(window_s), int(window)


async def drift_score(
    redis: Redis,
    model: str,
    version: str,
    *,
    key_prefix: str = DEFAULT_PREFIX,
    config: DriftConfig | None = None,
    now: float | None = None,
    cluster: bool = False,
) -> mpb.VersionDrift:
    """The cluster's drift of one version: its latest complete window against its profile.

    ``redis`` is a redis.asyncio client on the registry's Redis; ``config`` gives the
    method, thresholds, window and min_rows (the version's ``monitoring.drift``; default:
    the defaults). A window counts as complete report_grace_s after its end. ``scored``
    is false (with a ``note``) when there is no profile, no complete window, or too few
    rows in it. Features come most drifted first by the
    config's method; ``level`` is ok | warn | drift.
    """
    config = config or DriftConfig()
    keys = Keys(key_prefix, cluster=cluster)
    result = mpb.VersionDrift(model=model, version=version, method=config.method)
    for name, (warn, drift) in config.thresholds().items():
        result.thresholds[name].warn, result.thresholds[name].drift = warn, drift
    message = await load_profile(redis, keys, model, version)
    if message is None:
        result.note = "no reference profile (shunter drift baseline)"
        return result
    profile = Profile.from_proto(message)
    result.profile_id = profile.profile_id
    now_s = time.time() if now is None else now
    latest = await redis.zrevrangebyscore(
        keys.windows(model, version, profile.profile_id), int(now_s * 1000), "-inf", start=0, num=3, withscores=True
    )
    complete = [
        (member, end_ms) for member, end_ms in latest
        if end_ms / 1000 + report_grace_s(_member_window(member)[0]) <= now_s
    ]
    if not complete:
        result.note = "no complete window yet"
        return result
    member, end_ms = complete[0]
    window_s, window = _member_window(member)
    result.window, result.window_s, result.window_end_ms = window, window_s, int(end_ms)
    raw = await redis.hgetall(keys.counts(model, version, profile.profile_id, window_s, window))
    counter = BinCounter(profile)
    current = np.zeros(counter.features * counter.width, dtype=np.int64)
    rows = 0
    for field, value in raw.items():
        name = field.decode() if isinstance(field, bytes) else field
        if name == "rows":
            rows = int(value)
        elif name.isdigit() and int(name) < current.size:
            current[int(name)] = int(value)
    result.rows = rows
    if rows < config.min_rows:
        result.note = f"{rows} rows in the window, fewer than min_rows {config.min_rows}"
        return result
    scores = stats.scores(counter.reference, current.reshape(counter.features, counter.width))
    bands = config.thresholds()[config.method]
    order = np.argsort(-scores[config.method], kind="stable")
    for j in order.tolist():
        result.features.add(
            feature=profile.names[j],
            psi=float(scores["psi"][j]),
            js=float(scores["js"][j]),
            ks=float(scores["ks"][j]),
            level=stats.level(float(scores[config.method][j]), bands),
        )
    result.scored = True
    return result


async def version_drift(
    redis: Redis,
    version: rpb.ModelVersion,
    *,
    key_prefix: str = DEFAULT_PREFIX,
    now: float | None = None,
    cluster: bool = False,
) -> mpb.VersionDrift:
    """``drift_score`` for a registry ModelVersion, with the drift settings of its own
    config.yaml (defaults when it has no monitoring block): what a rollout gate calls with
    the canary's version from the catalogue."""
    try:
        config = parse_model_config(version.config_yaml, f"{version.model} version {version.version}")
        drift = config.monitoring.drift if config.monitoring is not None else DriftConfig()
    except ModelConfigError:
        drift = DriftConfig()
    return await drift_score(
        redis, version.model, version.version, key_prefix=key_prefix, config=drift, now=now, cluster=cluster
    )
