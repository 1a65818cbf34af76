"""Router settings: validated once at startup and passed in through constructors.

Each field is also a `shunter router` flag and a ``SHUNTER_ROUTER_<NAME>`` variable
(see services/common/settings.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.admission import AdmissionSettings
from services.common.settings import SettingsError, check_bounds, setting
from services.common.tls import ClientTls

#: The ways a router can carry requests to a worker (``--worker-link``): multiplexed over
#: one ModelStreamInfer stream per worker, or one ModelInfer call per request.
WORKER_LINKS = ("stream", "unary")


@dataclass(frozen=True, slots=True)
class RouterSettings:
    registry: str = setting(
        "", "registry HOST:PORT (its routing-table watch stream)", metavar="HOST:PORT",
        env_aliases=("SHUNTER_REGISTRY",),
    )
    admin_key: str = setting(
        "", "the router's key: for the registry's watch and, on every call, to workers (role router or admin)",
        secret=True, env_aliases=("SHUNTER_ADMIN_KEY",),
    )
    redis_url: str = setting(
        "", "Redis for shared rate limits and the cache (none: per-replica limits, no cache)",
        metavar="URL", env_aliases=("SHUNTER_REDIS_URL",),
    )
    key_prefix: str = setting("shunter:", "prefix of every Redis key the router writes")
    request_timeout_s: float = setting(
        60.0, "deadline for a request whose caller sets none", unit="s", minimum=0, exclusive_minimum=True
    )
    redis_timeout_s: float = setting(
        0.25, "Redis command and connect timeout; past it Redis counts as down", unit="s",
        minimum=0, exclusive_minimum=True,
    )
    redis_retry_after_s: float = setting(
        1.0, "after a Redis failure, how long to skip Redis before probing it again", unit="s", minimum=0
    )
    eject_after_failures: int = setting(
        3, "consecutive failures (UNAVAILABLE, broken connection) that eject a worker", minimum=1
    )
    eject_cooloff_s: float = setting(
        5.0, "how long an ejected worker is avoided", unit="s", minimum=0, exclusive_minimum=True
    )
    shadow_max_in_flight: int = setting(
        64, "shadow copies running at once; beyond it copies are dropped (and counted)", minimum=1
    )
    shadow_timeout_s: float = setting(
        10.0, "deadline of a shadow copy", unit="s", minimum=0, exclusive_minimum=True
    )
    default_cache_ttl_s: int = setting(
        60, "cache TTL when a model enables the cache without one", unit="s", minimum=1
    )
    near_cache_mb: float = setting(
        32.0, "recent cache entries each router keeps in memory in front of Redis (0: none)", unit="MiB", minimum=0
    )
    initial_table_timeout_s: float = setting(
        30.0, "how long start-up waits for the first routing table before serving (not ready) anyway",
        unit="s", minimum=0,
    )
    stream_max_in_flight: int = setting(128, "messages in flight per client ModelStreamInfer stream", minimum=1)
    #: Set from the server's --max-message-bytes (one flag for both).
    max_message_bytes: int = 64 * 1024 * 1024
    worker_link: str = setting(
        "stream", "how requests travel to workers: multiplexed over one ModelStreamInfer stream per worker, "
        "or one ModelInfer call each", choices=WORKER_LINKS,
    )
    version_stats_interval_s: float = setting(
        1.0, "how often per-version statistics (rollout gates, A/B and shadow reports) go to Redis (0: never)",
        unit="s", minimum=0,
    )
    #: TLS for the router's own calls (registry watch, workers); None: plaintext. From the --tls-ca flags.
    client_tls: ClientTls | None = None
    # -- overload and failure handling (README "Overload and failure handling") ---------
    max_in_flight: int = setting(
        0, "admission: inference requests this router holds at once, counted from arrival; past it they "
        "are refused at once with UNAVAILABLE (0: no bound)", minimum=0,
    )
    max_in_flight_per_version: int = setting(
        0, "admission: inference requests one model version holds at once in this router (0: no bound)",
        minimum=0,
    )
    deadline_admission: bool = setting(
        True, "admission: refuse at once a request with less time left than its version's requests take now"
    )
    max_in_flight_per_worker: int = setting(
        0, "requests one worker may hold from this router; with every worker of a version at it, requests "
        "are refused at once with UNAVAILABLE (0: no cap)", minimum=0,
    )
    worker_limit_ttl_s: float = setting(
        5.0, "after a worker refuses a request as overloaded, send it no more than it held then (growing back "
        "by one per that many answers) until this long after its last refusal; the router refuses the rest "
        "at once itself (0: never learn such a cap)", unit="s", minimum=0,
    )
    liveness_interval_s: float = setting(
        1.0, "stream link: ping a worker that has sent nothing for this long while requests wait",
        unit="s", minimum=0, exclusive_minimum=True,
    )
    liveness_timeout_s: float = setting(
        2.0, "stream link: a worker silent this long after a ping is hung; its requests are retried elsewhere",
        unit="s", minimum=0, exclusive_minimum=True,
    )
    outlier_ratio: float = setting(
        3.0, "eject a worker whose latency is over this many times its peers' median (0: never)", minimum=0
    )
    outlier_min_gap_s: float = setting(
        0.02, "... and at least this much above it", unit="s", minimum=0
    )
    outlier_cooloff_s: float = setting(
        10.0, "how long a latency outlier is avoided", unit="s", minimum=0, exclusive_minimum=True
    )
    hedge_models: tuple[str, ...] = setting(
        (), "models whose requests are idempotent: one not answered after --hedge-after-s also goes to a "
        "second worker, the first answer wins (comma-separated, repeatable)", flag="--hedge-model",
        metavar="MODEL",
    )
    hedge_after_s: float = setting(
        0.05, "how long a hedged request waits before its second attempt", unit="s",
        minimum=0, exclusive_minimum=True,
    )
    # -- payload logging (README "Observability: traces") ---------------------------------
    payload_log: str = setting(
        "", "append a sample of requests and responses to this Redis stream (none: off)",
        metavar="redis-stream://HOST:PORT/DB/STREAM",
    )
    payload_sample: float = setting(
        0.01, "fraction of answered requests the payload log keeps", minimum=0, exclusive_minimum=True, maximum=1
    )
    payload_log_maxlen: int = setting(
        100_000, "entries the payload stream is trimmed to, approximately (XADD MAXLEN ~)", minimum=1
    )
    payload_log_queue: int = setting(
        1024, "payload records waiting for Redis; past it new ones are dropped (and counted)", minimum=1
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.payload_log:
            from services.router.payload_log import PayloadLogConfigError, parse_target

            try:
                parse_target(self.payload_log)
            except PayloadLogConfigError as exc:
                raise SettingsError(f"--payload-log: {exc}") from None

    @property
    def admission(self) -> AdmissionSettings:
        """The edge's admission bounds (queue waits are the workers' own: queue_time.py)."""
        return AdmissionSettings(
            max_in_flight=self.max_in_flight,
            max_in_flight_per_version=self.max_in_flight_per_version,
            deadline_aware=self.deadline_admission,
        )

    @property
    def near_cache_bytes(self) -> int:
        return int(self.near_cache_mb * 1024 * 1024)
