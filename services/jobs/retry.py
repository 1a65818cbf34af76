"""Which gRPC failures are worth another try, and how long to wait before it.

UNAVAILABLE and DEADLINE_EXCEEDED are transient (a worker restarting, a full queue, a slow
batch): retried with exponential backoff and full jitter, as gRPC's own retry policy does.
RESOURCE_EXHAUSTED with a ``retry-after-ms`` trailer is a rate limit: wait what the router
asked and try again, without spending a retry. Everything else is final.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import grpc

RETRY_AFTER_TRAILER = "retry-after-ms"
TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class RetryPolicy:
    #: Tries per request for transient codes, the first included.
    max_attempts: int = 8
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    #: Longest single wait a ``retry-after-ms`` hint is honoured for.
    max_retry_after_s: float = 60.0

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Wait before try ``attempt + 1`` (``attempt`` counts from 1): full jitter up to the cap."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)


def retry_after_s(trailing_metadata: Any) -> float | None:
    """The ``retry-after-ms`` hint of a RESOURCE_EXHAUSTED reply in seconds, or None."""
    for key, value in trailing_metadata or ():
        if key == RETRY_AFTER_TRAILER:
            try:
                return max(0.0, int(value) / 1000)
            except (TypeError, ValueError):
                return None
    return None
