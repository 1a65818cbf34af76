"""The worker's side of cluster drift: fetch each version's profile, report finished windows.

One task per worker in cluster mode. Every tick (a quarter of the shortest window, 0.2 to
5 s) it walks the monitored versions: a version without a profile asks the registry for
one (at most every PROFILE_RETRY_S, so a baseline stored later is picked up); each
finished window goes to ``Monitor.ReportDriftCounts``, one RPC per window, which the
registry adds to every other worker's counts in Redis. A reply naming another profile
(the baseline was replaced) makes the worker fetch it and count against it from then on.
When the registry is unreachable, finished windows wait (observer.MAX_PENDING_WINDOWS)
and are sent when it answers.
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.common import background
from services.common.errors import NotFound, ShunterError
from services.gen.shunter.monitor.v1 import monitor_pb2 as mpb
from services.monitoring.client import MonitorClient
from services.monitoring.observer import (
    MAX_PENDING_WINDOWS,
    MonitorRegistry,
    MonitorThread,
    VersionMonitor,
    WindowCounts,
)
from services.monitoring.profile import Profile, ProfileError
from services.monitoring.windows import report_tick_s

logger = logging.getLogger(__name__)

PROFILE_RETRY_S = 15.0
#: Seconds a stopping worker spends sending its last counts.
FINAL_REPORT_S = 2.0


class DriftReporter:
    def __init__(self, client: MonitorClient, monitors: MonitorRegistry) -> None:
        self._client = client
        self._monitors = monitors
        self._task: asyncio.Task | None = None
        self._asked: dict[tuple[str, str], float] = {}
        self._unsent: dict[tuple[str, str], list[WindowCounts]] = {}
        self._warned = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="drift-reporter")

    async def stop(self) -> None:
        """Stop; first send what was counted, the window under way included (its counts add
        to the other workers' like any report), within FINAL_REPORT_S."""
        await background.stop(self._task)
        try:
            await asyncio.wait_for(self._final_report(), FINAL_REPORT_S)
        except (TimeoutError, ShunterError) as exc:
            logger.warning("drift: the last window's counts were not sent: %s", getattr(exc, "message", "timed out"))
        finally:
            await self._client.close()

    async def _final_report(self) -> None:
        await asyncio.to_thread(MonitorThread.shared().flush, 1.0)
        for monitor in self._monitors.all():
            if monitor.profile_id:
                self._unsent.setdefault((monitor.model, monitor.version), []).extend(monitor.take_all_windows())
                await self.step(monitor)

    def _tick_s(self) -> float:
        lengths = [m.drift.window_s for m in self._monitors.all() if m.drift.enabled]
        return report_tick_s(min(lengths)) if lengths else 1.0

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s())
            live = {(m.model, m.version) for m in self._monitors.all()}
            for gone in [k for k in self._unsent if k not in live]:  # unloaded versions
                self._unsent.pop(gone, None)
                self._asked.pop(gone, None)
            for monitor in self._monitors.all():
                if not monitor.drift.enabled:
                    continue
                try:
                    await self.step(monitor)
                    self._warned = False
                except ShunterError as exc:
                    background.raise_if_cancelled()  # a cancel a library turned into an error ends the loop
                    if not self._warned:
                        logger.warning("drift: cannot reach the registry's monitor service: %s", exc.message)
                        self._warned = True
                except Exception:
                    logger.exception("drift: reporting %s/%s failed", monitor.model, monitor.version)

    async def step(self, monitor: VersionMonitor) -> None:
        key = (monitor.model, monitor.version)
        if not monitor.profile_id:
            if time.monotonic() - self._asked.get(key, -PROFILE_RETRY_S) >= PROFILE_RETRY_S:
                self._asked[key] = time.monotonic()
                await self._fetch(monitor)
            return
        pending = self._unsent.setdefault(key, [])
        pending.extend(monitor.take_complete_windows())
        del pending[:-MAX_PENDING_WINDOWS]  # a long outage keeps the latest windows only
        while pending:
            window = pending[0]
            reply = await self._client.report(mpb.DriftCounts(
                model=monitor.model, version=monitor.version, profile_id=window.profile_id,
                window=window.window, window_s=window.window_s, rows=window.rows,
                bins_per_feature=window.counts.shape[1], counts=window.counts.ravel().tolist(),
            ))
            pending.pop(0)
            if reply.profile_id != monitor.profile_id:
                pending.clear()
                await self._fetch(monitor)
                return

    async def _fetch(self, monitor: VersionMonitor) -> None:
        try:
            message = await self._client.get_profile(monitor.model, monitor.version)
        except NotFound:
            monitor.set_profile(None)
            return
        try:
            monitor.set_profile(Profile.from_proto(message))
        except ProfileError as exc:
            logger.error("drift: %s/%s has an unusable profile: %s", monitor.model, monitor.version, exc)
            return
        logger.info("drift: counting %s/%s against reference profile %s (%d features)",
                    monitor.model, monitor.version, message.profile_id, len(message.features))
