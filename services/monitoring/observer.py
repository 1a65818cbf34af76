"""The worker side: each batch's inputs and outputs go to one monitor thread.

``VersionMonitor.wrap(infer)`` returns the engine call the batcher runs: it calls the
engine and hands the batch (references, no copies) to the process's ``MonitorThread``,
which never blocks the caller: when too much is waiting the batch is skipped and counted
(``shunter_monitor_dropped_batches_total``). So monitoring stays off the event loop even
for versions that run batches on it (``run_on_event_loop``), and off the engine thread's
critical path; the thread wakes every TICK_S and takes everything gathered at once.

On the monitor thread a batch updates the output statistics (outputs.py) and, once the
version has a reference profile, adds its feature counts to the current tumbling window
(``floor(unix time / window_s)``, the same on every worker, so the registry can add up
the counts of all workers window by window). ``take_complete_windows`` hands finished
windows to the reporter (reporter.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from services.common.model_config import ModelConfig
from services.monitoring.features import FeaturePlan, plan_features
from services.monitoring.outputs import OutputStats
from services.monitoring.profile import BinCounter, Profile

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
#: How often the monitor thread takes the batches gathered since its last turn.
TICK_S = 0.05
#: Batches, and bytes of their arrays, waiting for the monitor thread before new ones are skipped.
MAX_PENDING_BATCHES = 4096
MAX_PENDING_BYTES = 64 << 20
#: Finished windows kept for the reporter while the registry is unreachable.
MAX_PENDING_WINDOWS = 8
#: The monitor thread's name, also given to the OS thread (Linux), so `top -H` and
#: /proc/PID/task/*/comm show what monitoring costs (scripts/bench/monitoring_cost.py).
THREAD_NAME = "shunter-monitor"


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
        #: Batches can only be concatenated when their non-batch shapes agree.
        self._variable = any(-1 in t.shape for t in (*config.inputs, *config.outputs))
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
        """The engine call plus a hand-off of what monitoring needs: the watched outputs,
        and the inputs only while there is a profile to count them against."""
        thread = MonitorThread.shared()
        watched = tuple(self.outputs)

        def monitored(inputs: Arrays) -> Arrays:
            outputs = infer(inputs)
            thread.submit(
                self,
                inputs if self._counter is not None else {},
                {name: outputs[name] for name in watched if name in outputs},
                self._clock(),
            )
            return outputs

        return monitored

    def observe_batches(self, batches: list[tuple[Arrays, Arrays, float]]) -> None:
        """On the monitor thread: batches (inputs, outputs, when they ran) into the statistics.

        Consecutive batches of the same window (and, for variable shapes, the same
        non-batch shapes) are concatenated and counted in one pass: numpy's per-call
        overhead, not the arithmetic, is what small batches cost.
        """
        group: list[tuple[Arrays, Arrays]] = []
        group_key: tuple | None = None
        window_s = self.drift.window_s
        variable = self._variable
        for inputs, outputs, at in batches:
            if not self.batched:  # one row without a batch dimension: give it one
                inputs = {k: np.asarray(v)[None, ...] for k, v in inputs.items()}
                outputs = {k: np.asarray(v)[None, ...] for k, v in outputs.items()}
            window = int(at // window_s)
            # Inputs come only while there is a profile: batches from either side of a
            # profile change are never concatenated together.
            if variable:
                key: tuple = (window, len(inputs), tuple(v.shape[1:] for v in inputs.values()),
                              tuple(v.shape[1:] for v in outputs.values()))
            else:
                key = (window, len(inputs))
            if group and key != group_key:
                self._observe_rows(*_concat(group), group_key[0])
                group = []
            group.append((inputs, outputs))
            group_key = key
        if group:
            self._observe_rows(*_concat(group), group_key[0])

    def observe(self, inputs: Arrays, outputs: Arrays, at: float | None = None) -> None:
        """One batch, counted in the window of ``at`` (default: now)."""
        self.observe_batches([(inputs, outputs, self._clock() if at is None else at)])

    def _observe_rows(self, inputs: Arrays, outputs: Arrays, window: int) -> None:
        for name, stats in self.outputs.items():
            array = outputs.get(name)
            if array is not None:
                stats.observe(array)
        counter = self._counter
        if counter is None or not inputs:
            return
        rows = int(np.shape(next(iter(inputs.values())))[0])
        if rows == 0:
            return
        counts = counter.count(self.plan.extract(inputs, rows))
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

    def take_all_windows(self) -> list[WindowCounts]:
        """Every window, the one under way included (a stopping worker's last report)."""
        with self._lock:
            taken = [self._windows.pop(w) for w in sorted(self._windows)]
        return taken[-MAX_PENDING_WINDOWS:]

    def take_complete_windows(self) -> list[WindowCounts]:
        """Windows that have ended (oldest first), removed from the monitor."""
        now_window = int(self._clock() // self.drift.window_s)
        with self._lock:
            done = sorted(w for w in self._windows if w < now_window)
            taken = [self._windows.pop(w) for w in done]
        return taken[-MAX_PENDING_WINDOWS:]


def _name_os_thread(name: str) -> None:
    """Name the calling OS thread (Linux prctl PR_SET_NAME; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _concat(group: list[tuple[Arrays, Arrays]]) -> tuple[Arrays, Arrays]:
    if len(group) == 1:
        return group[0]
    inputs = {name: np.concatenate([g[0][name] for g in group]) for name in group[0][0]}
    outputs = {name: np.concatenate([g[1][name] for g in group]) for name in group[0][1]}
    return inputs, outputs


class MonitorThread:
    """One daemon thread per process that observes every monitored batch, TICK_S at a time.

    ``submit`` only appends to a deque (no lock, no wake-up): waking a thread per batch
    makes the event loop and the monitor thread trade the GIL on every batch, which cost
    far more throughput than the numpy work itself. Every TICK_S the thread takes what
    has gathered and observes it version by version, concatenated.
    """

    _shared: MonitorThread | None = None
    _shared_lock = threading.Lock()

    def __init__(self, tick_s: float = TICK_S) -> None:
        self._tick_s = tick_s
        self._pending: deque[tuple[VersionMonitor, Arrays, Arrays, float, int]] = deque()
        self._pending_bytes = 0
        self._drains = 0
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    @classmethod
    def shared(cls) -> MonitorThread:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def submit(self, monitor: VersionMonitor, inputs: Arrays, outputs: Arrays, at: float) -> None:
        size = sum(getattr(a, "nbytes", 0) for a in inputs.values()) + sum(
            getattr(a, "nbytes", 0) for a in outputs.values()
        )
        if len(self._pending) >= MAX_PENDING_BATCHES or self._pending_bytes + size > MAX_PENDING_BYTES:
            monitor.dropped += 1
            return
        # Updated from two threads without a lock: a bound, not an account (reset when drained).
        self._pending_bytes += size
        self._pending.append((monitor, inputs, outputs, at, size))

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every batch submitted so far has been observed (tests, shutdown)."""
        target = self._drains + 2  # the drain under way may have started before the call
        deadline = time.monotonic() + timeout_s
        while self._drains < target and time.monotonic() < deadline:
            time.sleep(self._tick_s / 4)

    def _run(self) -> None:
        _name_os_thread(THREAD_NAME)
        while True:
            time.sleep(self._tick_s)
            self._drain()
            self._drains += 1

    def _drain(self) -> None:
        by_monitor: dict[int, tuple[VersionMonitor, list[tuple[Arrays, Arrays, float]]]] = {}
        while self._pending:
            monitor, inputs, outputs, at, size = self._pending.popleft()
            by_monitor.setdefault(id(monitor), (monitor, []))[1].append((inputs, outputs, at))
            self._pending_bytes -= size
        if not self._pending:
            self._pending_bytes = 0
        for monitor, batches in by_monitor.values():
            try:
                monitor.observe_batches(batches)
            except Exception:
                logger.exception("monitoring %s/%s failed for %d batches", monitor.model, monitor.version,
                                 len(batches))


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
