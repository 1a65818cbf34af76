"""Pick a worker for a request: least outstanding of two random choices, passive health.

Power of two choices (as Ray Serve's ``PowToRouter``): sample two distinct ready
workers and send to the one with fewer requests outstanding *from this router*. It
needs no coordination between replicas, avoids the herd that "globally least loaded"
causes when many routers see the same stale numbers, and is close to optimal.

Passive health: a worker that fails ``eject_after`` times in a row (UNAVAILABLE or a
broken connection) is ejected for ``cooloff_s``; an ejected worker is used only when no
other worker of the version is left. The registry drops dead workers when their lease
expires; ejection covers the seconds before that.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.router import metrics

logger = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Replica:
    """One worker as this router sees it."""

    address: str
    #: Transport handle (a gRPC channel and its calls); None in unit tests.
    transport: Any = None
    outstanding: int = 0
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Balancer:
    def __init__(
        self,
        connect: Callable[[str], Any] | None = None,
        *,
        eject_after: int = 3,
        cooloff_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._connect = connect
        self._eject_after = eject_after
        self._cooloff_s = cooloff_s
        self._clock = clock
        self._rng = rng or random.Random()
        self.replicas: dict[str, Replica] = {}

    def replica(self, address: str) -> Replica:
        found = self.replicas.get(address)
        if found is None:
            transport = self._connect(address) if self._connect is not None else None
            found = self.replicas[address] = Replica(address, transport)
        return found

    def retain(self, addresses: Iterable[str]) -> list[Replica]:
        """Forget workers no longer in the routing table; returns them (to close their channels)."""
        keep = set(addresses)
        gone = [replica for address, replica in self.replicas.items() if address not in keep]
        for replica in gone:
            del self.replicas[replica.address]
        return gone

    def healthy(self, addresses: Sequence[str]) -> list[str]:
        now = self._clock()
        replicas = self.replicas
        return [a for a in addresses if (r := replicas.get(a)) is None or r.ejected_until <= now]

    def pick(self, addresses: Sequence[str], exclude: Replica | None = None) -> Replica | None:
        """The replica for the next attempt, or None when no worker is left to try."""
        candidates = addresses if exclude is None else [a for a in addresses if a != exclude.address]
        if not candidates:
            return None
        pool = self.healthy(candidates) or candidates
        count = len(pool)
        if count == 1:
            return self.replica(pool[0])
        i = self._rng.randrange(count)
        j = self._rng.randrange(count - 1)
        if j >= i:
            j += 1  # two distinct choices
        a, b = self.replica(pool[i]), self.replica(pool[j])
        return a if a.outstanding <= b.outstanding else b

    def succeeded(self, replica: Replica) -> None:
        replica.consecutive_failures = 0

    def failed(self, replica: Replica) -> None:
        replica.consecutive_failures += 1
        if replica.consecutive_failures >= self._eject_after:
            replica.consecutive_failures = 0
            replica.ejected_until = self._clock() + self._cooloff_s
            metrics.EJECTIONS.labels(replica.address).inc()
            logger.warning("worker %s ejected for %.1fs after repeated failures", replica.address, self._cooloff_s)
