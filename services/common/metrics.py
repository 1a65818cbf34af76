"""Prometheus metrics every service shares: RPC counts, latency and in-flight requests.

Defined once per process with fixed label sets; services add their own metrics in
their own modules. Names start with ``shunter_`` and carry their unit.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

#: Latency buckets in seconds, fine below a millisecond (the router hop) and up to 10 s.
LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)

REQUESTS = Counter(
    "shunter_requests",
    "gRPC requests handled, by service, method, model, version and status code.",
    ["service", "method", "model", "version", "code"],
)
REQUEST_LATENCY = Histogram(
    "shunter_request_duration_seconds",
    "Time from receiving a request to sending its response.",
    ["service", "method", "model"],
    buckets=LATENCY_BUCKETS_S,
)
IN_FLIGHT = Gauge(
    "shunter_in_flight_requests",
    "Requests being handled right now.",
    ["service", "method"],
)
