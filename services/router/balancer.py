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

A worker's own admission refusal (``refused``) teaches the router a second, learned cap:
the requests the worker held from this router when it refused (at least 1). Without it,
at 10x a router forwards every request to a worker that is full and relays the worker's
refusal back: two gRPC hops and a worker's decode for each, which on a busy host cost the
router about 50 % more CPU per refusal than refusing itself, so it fell behind and its
refusals queued for hundreds of milliseconds (RELIABILITY.md). The learned cap grows back
by one per cap's worth of answers (additive increase, as TCP's window), so it follows a
worker that speeds up, and is forgotten ``limit_ttl_s`` after the last refusal.

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

from services.common.admission import is_deadline_refusal
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
    #: Learned cap from the worker's own refusals (0: none): see ``Balancer.refused``.
    limit: float = 0.0
    limited_at: float = 0.0

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
        limit_ttl_s: float = 5.0,
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
        #: How long a learned cap outlives the worker's last refusal (0: never learn one).
        self.limit_ttl_s = limit_ttl_s
        self._clock = clock
        self._rng = rng or random.Random()
        self.replicas: dict[str, Replica] = {}
        #: Last outlier check per version's worker list.
        self._checked: dict[tuple[str, ...], float] = {}
        #: Replicas with a learned cap (so a balancer with none skips the cap filter).
        self._limited = 0

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
            if replica.limit:
                self._limited -= 1
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
        if self.max_outstanding or self._limited:
            replicas = self.replicas
            pool = [a for a in pool if (r := replicas.get(a)) is None or r.outstanding < self.cap_of(r)]
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

    def cap_of(self, replica: Replica) -> float:
        """The most requests ``replica`` may hold from this router now (inf: no cap).

        The lower of ``max_outstanding`` and the cap learned from its refusals; a learned
        cap older than ``limit_ttl_s`` is forgotten here.
        """
        cap = float(self.max_outstanding) if self.max_outstanding else math.inf
        if replica.limit:
            if self._clock() - replica.limited_at > self.limit_ttl_s:
                replica.limit = 0.0
                self._limited -= 1
            else:
                cap = min(cap, replica.limit)
        return cap

    def at_capacity(self, addresses: Sequence[str]) -> bool:
        """Whether every worker in ``addresses`` holds as many requests as it may (a cap applies)."""
        if not addresses or not (self.max_outstanding or self._limited):
            return False
        replicas = self.replicas
        return all((r := replicas.get(a)) is not None and r.outstanding >= self.cap_of(r) for a in addresses)

    def full_reason(self, addresses: Sequence[str]) -> str:
        """Why ``at_capacity(addresses)`` holds, for the refusal's message (names the limit)."""
        learned = [r for a in addresses if (r := self.replicas.get(a)) is not None and r.limit
                   and (not self.max_outstanding or r.limit < self.max_outstanding)]
        if not learned:
            return f"every worker of this version holds {self.max_outstanding} requests from this router"
        held = sum(r.outstanding for a in addresses if (r := self.replicas.get(a)) is not None)
        return (f"every worker of this version is full: each holds as many requests from this router ({held} in "
                "all) as it took before it last refused one")

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
        if replica.limit:
            replica.limit += 1.0 / replica.limit  # one more per cap's worth of answers

    def refused(self, replica: Replica, message: str = "") -> None:
        """The worker refused a request at admission (overloaded) while holding ``replica.outstanding``
        from this router, this one included: it takes no more than the others until it answers.

        A refusal for that request's own short deadline (``message``) says nothing about the
        worker being full, and teaches nothing.
        """
        if not self.limit_ttl_s or is_deadline_refusal(message):
            return
        if not replica.limit:
            self._limited += 1
        replica.limit = float(max(1, replica.outstanding - 1))
        replica.limited_at = self._clock()

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
