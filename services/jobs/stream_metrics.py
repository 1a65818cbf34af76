"""Prometheus metrics of ``shunter stream``, defined once with fixed labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PROCESSED = Counter("shunter_stream_processed", "Events inferred with their result written.", ["group"])
FAILED = Counter(
    "shunter_stream_failed",
    "Events whose inference or write failed this time; they stay pending and are delivered again.",
    ["group"],
)
DEAD_LETTERED = Counter(
    "shunter_stream_dead_lettered", "Events moved to the dead-letter stream, by reason.", ["group", "reason"]
)
CLAIMED = Counter("shunter_stream_claimed", "Pending events of idle consumers taken over (XAUTOCLAIM).", ["group"])
DUPLICATES = Counter(
    "shunter_stream_duplicate_results", "Results not written again because one already was (dedupe key).", ["group"]
)
BATCH_SIZE = Histogram(
    "shunter_stream_batch_size", "Events per batch read from the input stream.", ["group"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
LAG = Gauge("shunter_stream_lag", "Entries in the input stream not yet delivered to the group (XINFO GROUPS lag).",
            ["group"])
PENDING = Gauge("shunter_stream_pending", "Entries delivered to the group and not yet acknowledged.", ["group"])
REDIS_UP = Gauge("shunter_stream_redis_up", "1 while Redis answers, 0 while reconnecting.", ["group"])
