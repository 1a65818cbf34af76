"""Keep a version's last workers for a while when one table drops them all at once.

A registry that lost leases (swept after an outage, or Redis came back without them)
can publish a table in which a version that had ready workers has none, although those
workers are still serving. Routing nothing to them would fail every request of the
version at once. So when a new table gives a version no ready worker, and the workers
it had are gone from the table altogether (their leases vanished, not a worker saying
"not ready"), the router keeps routing to those workers for up to ``hold_s`` or until
the table lists ready workers for it again. A held worker that is really gone fails its
requests, which passive ejection then takes out of the pick (and the fallback version,
if any, takes over), so holding costs at most what not holding would have.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from services.router.table import RoutingSnapshot

logger = logging.getLogger(__name__)

#: How long a version's vanished workers are kept (one default lease TTL).
HOLD_S = 10.0


class WorkerHold:
    def __init__(self, hold_s: float = HOLD_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.hold_s = hold_s
        self._clock = clock
        #: (model, version) -> when its workers were first held.
        self._since: dict[tuple[str, str], float] = {}

    def apply(self, previous: RoutingSnapshot, new: RoutingSnapshot) -> RoutingSnapshot:
        """``new``, with the workers of versions it emptied carried over from ``previous``."""
        now = self._clock()
        held_any: set[str] = set()
        models = dict(new.models)
        still: dict[tuple[str, str], float] = {}
        for name, model in new.models.items():
            versions = None
            for number, entry in model.versions.items():
                old_model = previous.models.get(name)
                old = old_model.versions.get(number) if old_model is not None else None
                if entry.workers or old is None:
                    continue
                vanished = tuple(a for a in old.workers if a not in new.worker_addresses)
                if not vanished:
                    continue
                key = (name, number)
                since = self._since.get(key, now)
                if now - since >= self.hold_s:
                    logger.warning("routing table: %s version %s still has no ready worker after %.0f s; "
                                   "dropping the %d held", name, number, self.hold_s, len(vanished))
                    continue
                if key not in self._since:
                    logger.warning("routing table revision %d lists no ready worker for %s version %s; "
                                   "keeping its last %d for up to %.0f s", new.revision, name, number,
                                   len(vanished), self.hold_s)
                still[key] = since
                versions = versions if versions is not None else dict(model.versions)
                versions[number] = dataclasses.replace(entry, workers=vanished)
                held_any.update(vanished)
            if versions is not None:
                models[name] = dataclasses.replace(model, versions=versions)
        self._since = still
        if not held_any:
            return new
        return dataclasses.replace(new, models=models, worker_addresses=new.worker_addresses | held_any)

    @property
    def holding(self) -> int:
        """Versions whose workers are held now."""
        return len(self._since)
