"""Pick a worker for a request: latency-aware power of two choices, passive health.

Power of two choices (as Ray Serve's ``PowToRouter``): sample two distinct ready
workers and send to the cheaper one. It needs no coordination between replicas and
avoids the herd that "globally least loaded" causes when many routers see the same
stale numbers. The cost of a worker is *peak-EWMA* (as Finagle's and Linkerd's
balancers): its smoothed latency × (its requests outstanding from this router + 1).
Counting outstanding requests alone sends a worker 50 ms slower than its peer nearly
half the traffic at low load, where both show 0 or 1 outstanding; weighing by latency
sends it a share in proportion to its speed. The latency estimate jumps up to a slow
sample at once (the "peak") and decays towards faster ones with ``decay_s``; a worker
with no sample yet costs its peers' mean, and an estimate not refreshed for a while
decays too, so a worker that was slow is probed again once it may have recovered.

Passive health, two ways; an ejected worker is used only when no other worker of the
version is left:

- a worker that fails ``eject_after`` times in a row (UNAVAILABLE or a broken
  connection), or that misses a liveness ping once (``hung``), is ejected for
  ``cooloff_s``. The registry drops dead workers when their lease expires; ejection
  covers the seconds before that.
- *latency outliers*: at most once per ``outlier_interval_s`` per version, a worker whose
  latency is over ``outlier_ratio`` × the median of its peers (the version's other
  workers) and at least ``outlier_min_gap_s`` above it is ejected for ``outlier_cooloff_s`` — never more than
  half of a version's workers at once, so outlier ejection never empties a version.

The per-worker in-flight cap (``max_outstanding``, 0: none) takes a worker that already
holds that many requests from this router out of the pick; when every worker of the
version is at its cap the router refuses the request at once (``admission.Overloaded``).

Latency is kept per worker, over every model it serves for this router: a worker that
serves a slow model beside a fast one looks slower than one serving only the fast one.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from services.router import metrics

logger = logging.getLogger(__name__)

#: Decay time constant of the latency estimate (seconds): how long one slow sample (the
#: peak) keeps weighing. Short, so a worker that hiccuped once — a busy host — is not
#: taken for slow for long.
DECAY_S = 0.5
#: An estimate not refreshed for IDLE_GRACE_S starts to decay, by a factor of e per
#: IDLE_DECAY_S, so a worker once slow and since unpicked is probed again.
IDLE_GRACE_S = 2.0
IDLE_DECAY_S = 10.0


@dataclass(slots=True, eq=False)
class Replica:
    """One worker as this router sees it."""

    address: str
    #: Transport handle (a gRPC channel and its calls); None in unit tests.
    transport: Any = None
    outstanding: int = 0
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    #: Peak-EWMA latency (seconds) and when it was last updated; 0 samples: unknown.
    latency_s: float = 0.0
    stamp: float = 0.0
    samples: int = 0
    #: Requests answered (success or the worker's own error): the share tests count.
    answered: int = 0

    def latency_at(self, now: float) -> float:
        """The latency estimate, decayed for the time since it was last refreshed."""
        idle = now - self.stamp
        if idle <= IDLE_GRACE_S:
            return self.latency_s
        return self.latency_s * math.exp(-(idle - IDLE_GRACE_S) / IDLE_DECAY_S)


class Balancer:
    def __init__(
        self,
        connect: Callable[[str], Any] | None = None,
        *,
        eject_after: int = 3,
        cooloff_s: float = 5.0,
        max_outstanding: int = 0,
        decay_s: float = DECAY_S,
        outlier_ratio: float = 3.0,
        outlier_min_gap_s: float = 0.02,
        outlier_cooloff_s: float = 10.0,
        outlier_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._connect = connect
        self._eject_after = eject_after
        self._cooloff_s = cooloff_s
        self.max_outstanding = max_outstanding
        self._decay_s = decay_s
        self._outlier_ratio = outlier_ratio
        self._outlier_min_gap_s = outlier_min_gap_s
        self._outlier_cooloff_s = outlier_cooloff_s
        self._outlier_interval_s = outlier_interval_s
        self._clock = clock
        self._rng = rng or random.Random()
        self.replicas: dict[str, Replica] = {}
        #: Last outlier check per version's worker list.
        self._checked: dict[tuple[str, ...], float] = {}

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
        self._checked.clear()
        return gone

    def healthy(self, addresses: Sequence[str]) -> list[str]:
        now = self._clock()
        replicas = self.replicas
        return [a for a in addresses if (r := replicas.get(a)) is None or r.ejected_until <= now]

    def pick(self, addresses: Sequence[str], exclude: Replica | None = None) -> Replica | None:
        """The replica for the next attempt, or None when no worker is left to try.

        With a per-worker cap, workers at it are left out; ``at_capacity`` tells a None
        for that reason apart from "no worker left".
        """
        candidates = addresses if exclude is None else [a for a in addresses if a != exclude.address]
        if not candidates:
            return None
        pool = self.healthy(candidates) or candidates
        cap = self.max_outstanding
        if cap:
            replicas = self.replicas
            pool = [a for a in pool if (r := replicas.get(a)) is None or r.outstanding < cap]
            if not pool:
                return None
        count = len(pool)
        if count == 1:
            return self.replica(pool[0])
        i = self._rng.randrange(count)
        j = self._rng.randrange(count - 1)
        if j >= i:
            j += 1  # two distinct choices
        a, b = self.replica(pool[i]), self.replica(pool[j])
        now = self._clock()
        la = a.latency_at(now) if a.samples else None
        lb = b.latency_at(now) if b.samples else None
        if la is None or lb is None:
            fill = self._mean_latency(pool, now)
            la = fill if la is None else la
            lb = fill if lb is None else lb
        cost_a = la * (a.outstanding + 1)
        cost_b = lb * (b.outstanding + 1)
        if cost_a == cost_b:
            return a if a.outstanding <= b.outstanding else b
        return a if cost_a < cost_b else b

    def at_capacity(self, addresses: Sequence[str]) -> bool:
        """Whether every worker in ``addresses`` holds ``max_outstanding`` requests (a cap is set)."""
        cap = self.max_outstanding
        if not cap or not addresses:
            return False
        replicas = self.replicas
        return all((r := replicas.get(a)) is not None and r.outstanding >= cap for a in addresses)

    def _mean_latency(self, addresses: Sequence[str], now: float) -> float:
        known = [r.latency_at(now) for a in addresses if (r := self.replicas.get(a)) is not None and r.samples]
        return sum(known) / len(known) if known else 0.0

    # -- outcomes ---------------------------------------------------------------------

    def observe(self, replica: Replica, seconds: float, addresses: Sequence[str] = ()) -> None:
        """A response (or the worker's own error) after ``seconds``: update its latency."""
        now = self._clock()
        replica.answered += 1
        if replica.samples == 0 or seconds >= replica.latency_s:
            replica.latency_s = seconds  # the peak: a slow sample counts at once
        else:
            weight = math.exp(-max(now - replica.stamp, 0.0) / self._decay_s)
            replica.latency_s = replica.latency_s * weight + seconds * (1.0 - weight)
        replica.stamp = now
        replica.samples += 1
        if self._outlier_ratio > 0 and len(addresses) > 1:
            key = tuple(addresses)
            if now - self._checked.get(key, -math.inf) >= self._outlier_interval_s:
                self._checked[key] = now
                self._eject_outliers(addresses, now)

    def _eject_outliers(self, addresses: Sequence[str], now: float) -> None:
        replicas = [r for a in addresses if (r := self.replicas.get(a)) is not None]
        measured = {r.address: r.latency_at(now) for r in replicas if r.samples and r.ejected_until <= now}
        if len(measured) < 2:
            return
        ejected = sum(1 for r in replicas if r.ejected_until > now)
        budget = len(addresses) // 2 - ejected  # never more than half of the version's workers
        for address, latency in sorted(measured.items(), key=lambda item: item[1], reverse=True):
            if budget <= 0 or len(measured) < 2:
                return
            peers = statistics.median(x for a, x in measured.items() if a != address)
            if latency <= peers * self._outlier_ratio or latency - peers < self._outlier_min_gap_s:
                return
            replica = self.replicas[address]
            replica.ejected_until = now + self._outlier_cooloff_s
            # Its estimate restarts after the cool-off (probed again, not judged on old samples).
            replica.samples = 0
            del measured[address]
            budget -= 1
            metrics.EJECTIONS.labels(address).inc()
            logger.warning(
                "worker %s ejected for %.1fs: latency %.1f ms against its peers' median %.1f ms",
                address, self._outlier_cooloff_s, latency * 1000, peers * 1000,
            )

    def succeeded(self, replica: Replica) -> None:
        replica.consecutive_failures = 0

    def failed(self, replica: Replica, hung: bool = False) -> None:
        """A failure before any response; ``hung``: the worker missed a liveness ping (eject now)."""
        replica.consecutive_failures += 1
        if hung or replica.consecutive_failures >= self._eject_after:
            replica.consecutive_failures = 0
            replica.ejected_until = self._clock() + self._cooloff_s
            metrics.EJECTIONS.labels(replica.address).inc()
            logger.warning(
                "worker %s ejected for %.1fs after %s", replica.address, self._cooloff_s,
                "missing a liveness ping" if hung else "repeated failures",
            )
