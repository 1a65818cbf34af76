"""Registry settings: each is a `shunter registry` flag and a ``SHUNTER_REGISTRY_<NAME>`` variable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.settings import check_bounds, setting

#: Longest lease a worker may hold (also the bound on --lease-ttl-s).
MAX_TTL_S = 3600


@dataclass(frozen=True)
class RegistrySettings:
    """Each field is also a `shunter registry` flag and a ``SHUNTER_REGISTRY_<NAME>`` variable."""

    redis_url: str = setting(
        "", "Redis URL (required): redis://[USER:PASSWORD@]HOST:PORT/DB, rediss://...?ca=F, "
        "redis+sentinel://S:P,.../MASTER, redis+cluster://N:P,...", metavar="URL",
        env_aliases=("SHUNTER_REDIS_URL",)
    )
    key_prefix: str = setting("shunter:", "prefix of every Redis key, so several clusters can share one Redis")
    admin_key_file: Path | None = setting(
        None, "file holding the first admin key; only its sha256 is stored", metavar="FILE"
    )
    lease_ttl_s: int = setting(
        10, "worker lease TTL when a worker asks for none; a killed worker leaves within it", unit="s",
        minimum=1, maximum=MAX_TTL_S,
    )
    #: Safety-net re-read of Redis, on top of pub/sub wakeups (also notices expired leases).
    refresh_interval_s: float = setting(
        1.0, "safety-net re-read of Redis", unit="s", minimum=0, exclusive_minimum=True, hidden=True
    )
    artifact_roots: tuple[Path, ...] = setting(
        (), "directory registered artifacts must lie in (repeatable); none: any local path",
        flag="--artifact-root", metavar="DIR",
    )

    redis_wait_replicas: int = setting(
        0, "acknowledge a catalogue write only once N Redis replicas hold it (WAIT; 0: once the primary has it; "
        "see docs/operations.md)", minimum=0, metavar="N",
    )
    redis_wait_timeout_ms: int = setting(
        1000, "how long a write waits for those replicas before UNAVAILABLE", unit="ms", minimum=1, metavar="MS",
    )

    rollout_lease_ttl_s: float = setting(
        5.0, "rollout controller lease: when the acting replica dies, another acts within it", unit="s", minimum=1,
    )
    rollout_keep_baseline_s: float = setting(
        600.0, "after a promotion, how long the old version stays loaded at weight 0 before it is archived",
        unit="s", minimum=0,
    )
    rollout_max_inconclusive: int = setting(
        3, "inconclusive rollout windows in a row that pause a rollout", minimum=1, metavar="N",
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        object.__setattr__(self, "artifact_roots", tuple(p.expanduser().resolve() for p in self.artifact_roots))
