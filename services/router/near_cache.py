"""An in-process LRU in front of the Redis response cache.

Why: a hit in Redis still costs a round trip (about a fifth of a millisecond here, more
across a network), while a hot input is asked for again and again on the same router.
Entries are immutable: a response depends only on (model, version, inputs), and versions
never change once registered, so keeping a copy for a few seconds can serve nothing
wrong. Each copy lives no longer than the model's cache TTL, nor longer than
``max_age_s`` when it came from Redis (whose remaining TTL the router does not know).
Bounded by bytes: the least recently used entries go first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class NearCache:
    def __init__(self, max_bytes: int, max_age_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    @property
    def enabled(self) -> bool:
        return self._max_bytes > 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        """Keep ``value`` for ``ttl_s`` seconds at most; values over a quarter of the budget are not kept."""
        if ttl_s <= 0 or len(value) * 4 > self._max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, value)
        self._bytes += len(value)
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self._bytes -= len(value)
