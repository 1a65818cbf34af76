"""The router's own Prometheus metrics (the shared RPC metrics are in services.common.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REDIS_UP = Gauge(
    "shunter_router_redis_up",
    "1 while Redis answers (shared rate limits and cache); 0 while the router runs without it.",
)
RATE_LIMIT_LOCAL = Counter(
    "shunter_router_rate_limit_local",
    "Rate-limit decisions made by this replica alone because Redis was unreachable.",
)
RATE_LIMITED = Counter(
    "shunter_router_rate_limited",
    "Requests rejected with RESOURCE_EXHAUSTED by a key's rate limit.",
    ["model"],
)
CACHE = Counter(
    "shunter_router_cache",
    "Response-cache lookups by result: hit, miss, or bypass (Redis unreachable).",
    ["model", "result"],
)
SPLIT = Counter(
    "shunter_router_split_decisions",
    "Versions chosen for requests that did not name one (after fallback).",
    ["model", "version"],
)
FALLBACK = Counter(
    "shunter_router_fallbacks",
    "Requests sent to the fallback version because the chosen one had no ready worker.",
    ["model", "version"],
)
SHADOW = Counter(
    "shunter_router_shadow_requests",
    "Mirrored requests by outcome: agree, disagree, error, dropped (bound reached).",
    ["model", "version", "outcome"],
)
RETRIES = Counter(
    "shunter_router_retries",
    "Requests retried on another worker after UNAVAILABLE or a broken connection.",
)
EJECTIONS = Counter(
    "shunter_router_worker_ejections",
    "Workers ejected for a cool-off: repeated failures, a missed liveness ping, or latency far above their peers.",
    ["worker"],
)
WORKER_REFUSALS = Counter(
    "shunter_router_worker_refusals",
    "Requests a worker refused at admission (overloaded, UNAVAILABLE); retried elsewhere, never ejected for.",
)
WORKERS_AT_CAP = Counter(
    "shunter_router_workers_at_cap",
    "Requests refused at once because every worker of the version was at the per-worker in-flight cap.",
)
HEDGES = Counter(
    "shunter_router_hedged_requests",
    "Second attempts sent because the first had not answered in --hedge-after-s (idempotent models only).",
)
LIVENESS_FAILURES = Counter(
    "shunter_router_liveness_failures",
    "Worker streams broken because the worker did not answer a liveness ping in time (hung or stopped).",
)
TABLE_REVISION = Gauge(
    "shunter_router_routing_table_revision",
    "Revision of the routing table this router holds (0: none yet).",
)
REGISTRY_CONNECTED = Gauge(
    "shunter_router_registry_connected",
    "1 while the routing-table watch stream is open; 0 while serving on the last table.",
)
TABLES_REFUSED = Counter(
    "shunter_router_routing_tables_refused",
    "Routing tables not installed: the revision went back and models or keys were missing "
    "(the registry's Redis lost its data); the router keeps its last table.",
)
WORKERS_HELD = Gauge(
    "shunter_router_versions_with_held_workers",
    "Versions whose last workers are kept although the newest table lists none ready.",
)
