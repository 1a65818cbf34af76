"""Router settings: validated once at startup and passed in through constructors."""

from __future__ import annotations

from dataclasses import dataclass

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
    #: Sampled request/response records go to this stream (redis-stream://HOST:PORT/DB/STREAM; "": none).
    payload_log: str = ""
    #: Fraction of answered requests the payload log keeps.
    payload_sample: float = 0.01
    #: Entries the payload stream is trimmed to (XADD MAXLEN ~).
    payload_log_maxlen: int = 100_000
    #: Records waiting for Redis; past it new ones are dropped (and counted).
    payload_log_queue: int = 1024

    def __post_init__(self) -> None:
        if self.worker_link not in WORKER_LINKS:
            raise ValueError(f"worker_link must be one of {', '.join(WORKER_LINKS)}, got {self.worker_link!r}")
        if self.payload_log:
            from services.router.payload_log import parse_target

            parse_target(self.payload_log)  # raises PayloadLogConfigError (a ValueError) naming the problem
        if not 0.0 < self.payload_sample <= 1.0:
            raise ValueError(f"payload_sample must be above 0 and at most 1, got {self.payload_sample}")
        if self.near_cache_bytes < 0:
            raise ValueError(f"near_cache_bytes must be 0 or more, got {self.near_cache_bytes}")
        for name in ("request_timeout_s", "redis_timeout_s", "shadow_timeout_s", "eject_cooloff_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("eject_after_failures", "shadow_max_in_flight", "stream_max_in_flight", "default_cache_ttl_s",
                     "payload_log_maxlen", "payload_log_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
