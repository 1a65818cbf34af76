"""One Redis connection shared by the rate limiter and the cache, with outage tracking.

A router must keep serving when Redis is down (DESIGN §5): callers ask ``available()``
before each use and report failures; after a failure Redis is skipped for
``retry_after_s`` (so requests do not each pay a connect timeout) and then probed again
by the next request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common import redis_connect
from services.router import metrics

logger = logging.getLogger(__name__)

#: Exceptions that mean "Redis is unreachable" (as opposed to a bad command), in any mode.
#: RuntimeError too: uvloop (the services' event loop) raises it for a write on a transport
#: the peer reset between connect and the first command (a Redis dying mid-connect), and
#: redis-py passes it through. The handlers that catch these wrap one Redis call each.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (*redis_connect.OUTAGE_ERRORS, RuntimeError)


class RedisLink:
    def __init__(
        self,
        url: str | None,
        *,
        timeout_s: float = 0.25,
        retry_after_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The limiter and the cache touch one key per call, so on a Redis Cluster the
        # cluster client spreads them over every primary by key.
        self.client: Any = (
            redis_connect.connect(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                # One immediate retry on a fresh connection: after a Redis restart every
                # pooled connection is dead, and each would otherwise fail one request
                # (a spurious outage: local limits, a cache bypass) before being replaced.
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[RedisConnectionError],
                health_check_interval=0,
            )
            if url
            else None
        )
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._down_until = 0.0
        self._up = self.client is not None
        metrics.REDIS_UP.set(1 if self._up else 0)

    def available(self) -> bool:
        """True when Redis should be tried for this request."""
        return self.client is not None and (self._up or self._clock() >= self._down_until)

    def succeeded(self) -> None:
        if not self._up:
            logger.info("redis reachable again; shared rate limits and cache resume")
            self._up = True
            metrics.REDIS_UP.set(1)

    def failed(self, exc: BaseException) -> None:
        if self._up:
            logger.warning("redis unreachable (%s); local rate limits, cache bypassed", exc)
        self._up = False
        self._down_until = self._clock() + self._retry_after_s
        metrics.REDIS_UP.set(0)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
