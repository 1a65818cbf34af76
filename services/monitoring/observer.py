"""The worker side: each batch's inputs and outputs go to one monitor thread.

``VersionMonitor.wrap(infer)`` returns the engine call the batcher runs: it calls the
engine and hands the batch (references, no copies) to the process's ``MonitorThread``,
which never blocks the caller: when its queue is full the batch is skipped and counted
(``shunter_monitor_dropped_batches_total``). So monitoring stays off the event loop even
for versions that run batches on it (``run_on_event_loop``), and off the engine thread's
critical path.

On the monitor thread a batch updates the output statistics (outputs.py) and, once the
version has a reference profile, adds its feature counts to the current tumbling window
(``floor(unix time / window_s)``, the same on every worker, so the registry can add up
the counts of all workers window by window). ``take_complete_windows`` hands finished
windows to the reporter (drift_link.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from services.common.model_config import ModelConfig
from services.monitoring.features import FeaturePlan, plan_features
from services.monitoring.outputs import OutputStats
from services.monitoring.profile import BinCounter, Profile

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
#: Batches waiting for the monitor thread before new ones are skipped.
QUEUE_BATCHES = 256
#: Finished windows kept for the reporter while the registry is unreachable.
MAX_PENDING_WINDOWS = 8


@dataclass(slots=True)
class WindowCounts:
    profile_id: str
    window: int
    window_s: float
    rows: int
    counts: np.ndarray  # (features, width)


class VersionMonitor:
    """Monitoring state of one loaded model version."""

    def __init__(self, model: str, version: str, config: ModelConfig, clock: Callable[[], float] = time.time) -> None:
        assert config.monitoring is not None
        self.model = model
        self.version = version
        self.settings = config.monitoring
        self.drift = config.monitoring.drift
        self._clock = clock
        shapes = {t.name: tuple(t.shape) for t in config.outputs}
        self.outputs = {
            name: OutputStats(name, kind, shapes[name]) for name, kind in config.monitoring.outputs.items()
        }
        self.plan: FeaturePlan = plan_features(config.inputs, self.drift.max_features)
        self.batched = config.max_batch_size > 0
        self.dropped = 0
        self.rows = 0
        self._lock = threading.Lock()
        self._counter: BinCounter | None = None
        self._windows: dict[int, WindowCounts] = {}

    # ---- profile ---------------------------------------------------------------------

    @property
    def profile_id(self) -> str:
        counter = self._counter
        return counter.profile.profile_id if counter is not None else ""

    def set_profile(self, profile: Profile | None) -> None:
        """Count against ``profile`` from now on (None: stop); open windows are dropped."""
        if profile is not None and profile.names != self.plan.names:
            logger.error("%s/%s: the reference profile's features do not match the model's inputs; drift is off",
                         self.model, self.version)
            profile = None
        with self._lock:
            self._counter = BinCounter(profile) if profile is not None and self.drift.enabled else None
            self._windows.clear()

    # ---- the batch path --------------------------------------------------------------

    def wrap(self, infer: Callable[[Arrays], Arrays]) -> Callable[[Arrays], Arrays]:
        thread = MonitorThread.shared()

        def monitored(inputs: Arrays) -> Arrays:
            outputs = infer(inputs)
            thread.submit(self, inputs, outputs, self._clock())
            return outputs

        return monitored

    def observe(self, inputs: Arrays, outputs: Arrays, at: float | None = None) -> None:
        """On the monitor thread: one batch into the output statistics and the window.

        ``at`` is when the batch ran (wall clock): it picks the window, so a monitor thread
        that falls behind still counts each batch where it belongs.
        """
        for name, stats in self.outputs.items():
            array = outputs.get(name)
            if array is not None:
                stats.observe(array if self.batched else np.asarray(array)[None, ...])
        counter = self._counter
        if counter is None:
            return
        first = next(iter(inputs.values()))
        rows = int(np.asarray(first).shape[0]) if self.batched else 1
        if rows == 0:
            return
        counts = counter.count(self.plan.extract(inputs, rows))
        window = int((self._clock() if at is None else at) // self.drift.window_s)
        with self._lock:
            if self._counter is not counter:
                return  # the profile changed meanwhile
            current = self._windows.get(window)
            if current is None:
                current = self._windows[window] = WindowCounts(
                    counter.profile.profile_id, window, self.drift.window_s, 0, np.zeros_like(counts)
                )
            current.rows += rows
            current.counts += counts
            self.rows += rows

    def take_complete_windows(self) -> list[WindowCounts]:
        """Windows that have ended (oldest first), removed from the monitor."""
        now_window = int(self._clock() // self.drift.window_s)
        with self._lock:
            done = sorted(w for w in self._windows if w < now_window)
            taken = [self._windows.pop(w) for w in done]
        return taken[-MAX_PENDING_WINDOWS:]


class MonitorThread:
    """One daemon thread per process that runs ``VersionMonitor.observe`` for every batch."""

    _shared: MonitorThread | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[VersionMonitor, Arrays, Arrays, float]] = queue.Queue(QUEUE_BATCHES)
        self._thread = threading.Thread(target=self._run, name="shunter-monitor", daemon=True)
        self._thread.start()

    @classmethod
    def shared(cls) -> MonitorThread:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def submit(self, monitor: VersionMonitor, inputs: Arrays, outputs: Arrays, at: float) -> None:
        try:
            self._queue.put_nowait((monitor, inputs, outputs, at))
        except queue.Full:
            monitor.dropped += 1

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every batch submitted so far has been observed (tests, shutdown)."""
        done = threading.Event()
        try:
            self._queue.put((_Marker(done), {}, {}, 0.0), timeout=timeout_s)  # type: ignore[arg-type]
        except queue.Full:
            return
        done.wait(timeout_s)

    def _run(self) -> None:
        while True:
            monitor, inputs, outputs, at = self._queue.get()
            try:
                monitor.observe(inputs, outputs, at)
            except Exception:
                logger.exception("monitoring %s/%s failed for one batch", monitor.model, monitor.version)


class _Marker:
    """A queue entry that only signals it was reached (MonitorThread.flush)."""

    model = version = "-"

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def observe(self, inputs: Arrays, outputs: Arrays, at: float) -> None:
        self._event.set()


class MonitorRegistry:
    """The VersionMonitors of this process, for the metrics collector and the reporter."""

    def __init__(self) -> None:
        self._monitors: dict[tuple[str, str], VersionMonitor] = {}

    def track(self, monitor: VersionMonitor) -> None:
        self._monitors[(monitor.model, monitor.version)] = monitor

    def untrack(self, monitor: VersionMonitor) -> None:
        if self._monitors.get((monitor.model, monitor.version)) is monitor:
            del self._monitors[(monitor.model, monitor.version)]

    def all(self) -> list[VersionMonitor]:
        return list(self._monitors.values())


MONITORS = MonitorRegistry()
