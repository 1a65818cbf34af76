"""The registry's own Prometheus metrics (the per-RPC ones are in services.common.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REVISION = Gauge("shunter_registry_revision", "Revision of the snapshot this replica serves.")
REDIS_UP = Gauge(
    "shunter_registry_redis_up", "1 while Redis answers; 0 while writes are refused and reads serve the last snapshot."
)
WATCHERS = Gauge("shunter_registry_watchers", "Open WatchRoutingTable streams on this replica.")
SNAPSHOTS_SENT = Counter("shunter_registry_snapshots_sent", "Routing-table snapshots sent to watchers.")
WRITES = Counter("shunter_registry_writes", "Registry writes that changed state, by kind.", ["kind"])
WRITE_RETRIES = Histogram(
    "shunter_registry_write_retries",
    "Optimistic-transaction retries a write needed (concurrent writers).",
    buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128),
)
LEASES_EXPIRED = Counter("shunter_registry_leases_expired", "Worker leases removed because they expired.")
AUTH_FAILURES = Counter(
    "shunter_registry_auth_failures", "Calls refused for their key, by reason.", ["reason"]
)
STORE_RESETS = Counter(
    "shunter_registry_store_resets",
    "Times Redis was found to have lost data (revision went back, versions or keys gone); "
    "each time this replica wrote its last snapshot back.",
)
LEASE_GRACE = Gauge(
    "shunter_registry_lease_grace", "1 while leases are not swept (after start, or after Redis returned)."
)
WAIT_REPLICAS = Histogram(
    "shunter_registry_wait_replicas",
    "Replicas that confirmed a catalogue write (WAIT), with --redis-wait-replicas set.",
    buckets=(0, 1, 2, 3, 4, 8),
)
