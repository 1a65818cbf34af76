"""Router settings: validated once at startup and passed in through constructors."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.admission import AdmissionSettings

#: The ways a router can carry requests to a worker (``--worker-link``): multiplexed over
#: one ModelStreamInfer stream per worker, or one ModelInfer call per request.
WORKER_LINKS = ("stream", "unary")


@dataclass(frozen=True, slots=True)
class RouterSettings:
    #: host:port of a registry replica (the routing table's watch stream).
    registry: str = ""
    #: Key the router authenticates to the registry with (it sees key hashes and leases).
    admin_key: str = ""
    #: Redis for shared rate limits and the cache; "" runs with local limits and no cache.
    redis_url: str = ""
    #: Prefix of every Redis key the router writes (rate-limit buckets, cache entries).
    key_prefix: str = "shunter:"
    #: Deadline for a request whose caller set none.
    request_timeout_s: float = 60.0
    #: Redis command and connect timeout; past it Redis counts as down.
    redis_timeout_s: float = 0.25
    #: After a Redis failure, how long to skip Redis before probing it again.
    redis_retry_after_s: float = 1.0
    #: Consecutive failures (UNAVAILABLE, broken connection) that eject a worker.
    eject_after_failures: int = 3
    #: How long an ejected worker is avoided.
    eject_cooloff_s: float = 5.0
    #: Shadow copies running at once; beyond it copies are dropped (and counted).
    shadow_max_in_flight: int = 64
    #: Deadline of a shadow copy.
    shadow_timeout_s: float = 10.0
    #: Cache TTL when a model enables the cache without a TTL.
    default_cache_ttl_s: int = 60
    #: Bytes of recent cache entries kept in this process in front of Redis (0: none).
    near_cache_bytes: int = 32 * 1024 * 1024
    #: How long start-up waits for the first routing table before serving (not ready) anyway.
    initial_table_timeout_s: float = 30.0
    #: Messages in flight per ModelStreamInfer stream.
    stream_max_in_flight: int = 128
    max_message_bytes: int = 64 * 1024 * 1024
    #: How requests travel to workers: "stream" (multiplexed ModelStreamInfer) or "unary".
    worker_link: str = "stream"
    #: Admission of inference requests at this router's edge (services/common/admission.py).
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    #: Requests one worker may hold from this router at once; past it the worker is not
    #: picked, and with every worker at it the request is refused at once (0: no cap).
    max_in_flight_per_worker: int = 0
    #: Stream link: with requests pending and nothing read for this long, ping the worker.
    liveness_interval_s: float = 1.0
    #: Stream link: no answer at all this long after a ping breaks the stream (worker hung).
    liveness_timeout_s: float = 2.0
    #: A worker whose latency is over this × its peers' median is ejected (0: never).
    outlier_ratio: float = 3.0
    #: ... and only when it is at least this much above the median.
    outlier_min_gap_s: float = 0.02
    #: How long a latency outlier is avoided.
    outlier_cooloff_s: float = 10.0
    #: Models whose requests are idempotent: a request not answered after ``hedge_after_s``
    #: is sent to a second worker too, and the first answer wins (empty: no hedging).
    hedge_models: tuple[str, ...] = ()
    hedge_after_s: float = 0.05

    def __post_init__(self) -> None:
        if self.worker_link not in WORKER_LINKS:
            raise ValueError(f"worker_link must be one of {', '.join(WORKER_LINKS)}, got {self.worker_link!r}")
        if self.near_cache_bytes < 0:
            raise ValueError(f"near_cache_bytes must be 0 or more, got {self.near_cache_bytes}")
        for name in ("request_timeout_s", "redis_timeout_s", "shadow_timeout_s", "eject_cooloff_s",
                     "liveness_interval_s", "liveness_timeout_s", "outlier_cooloff_s", "hedge_after_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("eject_after_failures", "shadow_max_in_flight", "stream_max_in_flight", "default_cache_ttl_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_in_flight_per_worker", "outlier_ratio", "outlier_min_gap_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
