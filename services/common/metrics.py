"""Prometheus metrics every service shares: RPC counts, latency and in-flight requests.

Defined once per process with fixed label sets; services add their own metrics in
their own modules. Names start with ``shunter_`` and carry their unit.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any

import grpc
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

#: The label of a model or version the service does not know (a typo, or a client probing).
UNKNOWN_LABEL = "_unknown"


def known_labels(versions_of: Callable[[str], Container[str] | None]) -> Callable[[str, str], tuple[str, str]]:
    """Labels that keep a request's model and version only where the service knows them.

    ``versions_of(model)`` gives the versions the service holds for a model, or None for a
    model it does not know. The label set is then bounded by the catalogue, not by clients.
    """

    def labels(model: str, version: str) -> tuple[str, str]:
        versions = versions_of(model)
        if versions is None:
            return UNKNOWN_LABEL, ""
        if version and version not in versions:
            return model, UNKNOWN_LABEL
        return model, version

    return labels


class RpcObserver:
    """Records one service's RPCs, caching labelled children (labels() is the slow part)."""

    def __init__(self, service: str, labels: Callable[[str, str], tuple[str, str]] | None = None) -> None:
        self._service = service
        #: Maps a request's (model, version) to the labels it is recorded under; names a
        #: client made up must not become series of their own.
        self._labels = labels
        self._counters: dict[tuple[str, str, str, str], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, model: str, version: str, code: grpc.StatusCode, seconds: float) -> None:
        if self._labels is not None:
            model, version = self._labels(model, version)
        key = (method, model, version, code.name)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = REQUESTS.labels(self._service, *key)
        counter.inc()
        hkey = (method, model)
        histogram = self._histograms.get(hkey)
        if histogram is None:
            histogram = self._histograms[hkey] = REQUEST_LATENCY.labels(self._service, method, model)
        histogram.observe(seconds)
