"""Per-version request statistics in Redis: the layout routers write and the registry reads.

Routers count, per model × version, requests, errors by gRPC status code and a latency
histogram with fixed buckets, and add their counts to Redis about once a second
(``services/router/version_stats.py``). The registry's rollout controller and reports sum
any window for any version across all routers (``services/registry/rollout/window.py``).
Both sides share this module, so the bucket bounds and key names cannot drift apart.

Keys are time-bucketed hashes, one per model × version × slot, at two resolutions: one
second (kept ``SECOND_TTL_S``, for rollout intervals) and one minute (kept
``MINUTE_TTL_S``, for reports over hours). Fields: ``n`` (requests), ``e:<CODE>`` (requests
that ended with that status code), ``b:<i>`` (successful requests whose latency fell in
bucket ``i``). Latency is recorded for successful requests only: a failure that returns at
once would otherwise pull a broken version's p99 down.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from services.common.redis_connect import hash_tagged

#: Upper bounds (ms) of the latency buckets: 0.25 ms × 1.25^i up to about a minute, so a
#: quantile read from them is within 25 % of the true one (interpolation narrows it).
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(round(0.25 * 1.25**i, 4) for i in range(56))
#: Buckets: one per bound plus one for anything slower than the last bound.
BUCKETS = len(LATENCY_BOUNDS_MS) + 1

#: (name, slot width in seconds, TTL in seconds) of each resolution.
SECOND = ("s", 1, 15 * 60)
MINUTE = ("m", 60, 25 * 3600)
RESOLUTIONS = (SECOND, MINUTE)
SECOND_TTL_S = SECOND[2]
MINUTE_TTL_S = MINUTE[2]


def bucket_of(latency_ms: float) -> int:
    """The histogram bucket of one latency."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)


def stats_prefix(key_prefix: str, *, cluster: bool = False) -> str:
    """The prefix of every statistics key. On a Redis Cluster all of them carry one hash tag
    (``{shunter:stats}:``), so the registry reads any window through one slot-pinned client
    (``redis_connect.connect(url, slot_key=...)``), as it reads its own keys."""
    if key_prefix and not key_prefix.endswith(":"):
        key_prefix += ":"
    return hash_tagged(key_prefix + "stats:") if cluster else key_prefix


def acl_patterns(key_prefix: str, *, cluster: bool = False) -> tuple[str, ...]:
    """Key patterns of the statistics, for Redis ACL rules (routers write, the registry reads)."""
    base = stats_prefix(key_prefix, cluster=cluster)
    return tuple(f"{base}{name}:*" for name in ("vstats", "sstats", "shadow_samples"))


def slot_key(prefix: str, resolution: str, model: str, version: str, slot: int) -> str:
    return f"{prefix}vstats:{resolution}:{model}:{version}:{slot}"


@dataclass
class WindowStats:
    """One version's counts over a window (summed over routers and slots)."""

    requests: int = 0
    #: status code name -> requests that ended with it (OK is not listed).
    errors: dict[str, int] = field(default_factory=dict)
    #: successful requests per latency bucket (``BUCKETS`` entries).
    buckets: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    def add_hash(self, fields: dict[bytes | str, bytes | str | int]) -> None:
        """Add one Redis hash (one router flush slot) to these counts."""
        for raw_name, raw_value in fields.items():
            name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
            value = int(raw_value)
            if name == "n":
                self.requests += value
            elif name.startswith("e:"):
                self.errors[name[2:]] = self.errors.get(name[2:], 0) + value
            elif name.startswith("b:"):
                index = int(name[2:])
                if 0 <= index < BUCKETS:
                    self.buckets[index] += value

    def error_count(self, codes: frozenset[str] | None = None) -> int:
        """Requests that failed with one of ``codes`` (all non-OK codes when None)."""
        return sum(n for code, n in self.errors.items() if codes is None or code in codes)

    @property
    def successes(self) -> int:
        return sum(self.buckets)

    def quantile_ms(self, q: float) -> float:
        """The ``q`` quantile of successful latencies in ms (linear within a bucket); NaN if none."""
        total = self.successes
        if total == 0 or not 0 <= q <= 1:
            return math.nan
        rank = q * total
        seen = 0
        for index, count in enumerate(self.buckets):
            if count and seen + count >= rank:
                lower = LATENCY_BOUNDS_MS[index - 1] if index > 0 else 0.0
                upper = LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else LATENCY_BOUNDS_MS[-1]
                return lower + (upper - lower) * ((rank - seen) / count)
            seen += count
        return LATENCY_BOUNDS_MS[-1]

    def to_dict(self) -> dict[str, object]:
        return {"requests": self.requests, "errors": dict(sorted(self.errors.items())),
                "p50_ms": _finite(self.quantile_ms(0.5)), "p99_ms": _finite(self.quantile_ms(0.99))}


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


# ---- shadow comparisons ---------------------------------------------------------------------
#
# Per shadow model × version × slot (same resolutions), routers add: ``n`` compared
# mirrors, ``agree`` (every output within rtol/atol), ``error`` (the shadow failed),
# ``am_rows`` / ``am_flips`` (classifier rows compared by argmax, and those whose label
# differs), ``d:<i>`` (mirrors whose largest absolute difference fell in ``DIFF_BOUNDS``
# bucket i), ``sl:<i>`` / ``pl:<i>`` (shadow and primary latency, latency buckets). Up to
# ``MAX_SHADOW_SAMPLES`` disagreements are kept per version (a list, newest first, with a TTL).

#: Upper bounds of the largest-absolute-difference buckets: 0, then 1e-9 … 1e3, then more.
DIFF_BOUNDS: tuple[float, ...] = (0.0, *(10.0**k for k in range(-9, 4)))
DIFF_BUCKETS = len(DIFF_BOUNDS) + 1
MAX_SHADOW_SAMPLES = 20
SHADOW_SAMPLE_TTL_S = 24 * 3600
#: Values kept per tensor in a sample (inputs and outputs are truncated to this).
SAMPLE_VALUES = 8


def diff_bucket(value: float) -> int:
    if math.isnan(value):
        return DIFF_BUCKETS - 1
    return bisect.bisect_left(DIFF_BOUNDS, value)


def shadow_key(prefix: str, resolution: str, model: str, version: str, slot: int) -> str:
    return f"{prefix}sstats:{resolution}:{model}:{version}:{slot}"


def shadow_samples_key(prefix: str, model: str, version: str) -> str:
    return f"{prefix}shadow_samples:{model}:{version}"


@dataclass
class ShadowStats:
    """One shadow version's comparisons over a window."""

    compared: int = 0
    agree: int = 0
    errors: int = 0
    argmax_rows: int = 0
    argmax_flips: int = 0
    diffs: list[int] = field(default_factory=lambda: [0] * DIFF_BUCKETS)
    shadow_latency: WindowStats = field(default_factory=WindowStats)
    primary_latency: WindowStats = field(default_factory=WindowStats)

    def add_hash(self, fields: dict[bytes | str, bytes | str | int]) -> None:
        simple = {"n": "compared", "agree": "agree", "error": "errors", "am_rows": "argmax_rows",
                  "am_flips": "argmax_flips"}
        for raw_name, raw_value in fields.items():
            name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
            value = int(raw_value)
            prefix, _, index = name.partition(":")
            if name in simple:
                setattr(self, simple[name], getattr(self, simple[name]) + value)
            elif prefix == "d" and 0 <= int(index) < DIFF_BUCKETS:
                self.diffs[int(index)] += value
            elif prefix in ("sl", "pl") and 0 <= int(index) < BUCKETS:
                target = self.shadow_latency if prefix == "sl" else self.primary_latency
                target.buckets[int(index)] += value
                target.requests += value
