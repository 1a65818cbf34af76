"""Engine instance threads run below the event loop (``--engine-nice``).

Linux keeps a nice value per thread: the instance thread lowers its own, so the loop that
receives requests keeps its priority. Read back from the thread itself with getpriority.
"""

from __future__ import annotations

import os
import sys
import threading

import pytest

from services.worker.daemon_executor import DaemonThreadExecutor

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")


def own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_the_instance_thread_runs_at_the_loops_nice_plus_engine_nice():
    base = own_nice()
    if base > 19 - 5:
        pytest.skip(f"the test process already runs at nice {base}")
    executor = DaemonThreadExecutor("engine-test", nice=5)
    try:
        assert executor.submit(own_nice).result(timeout=10) == base + 5
    finally:
        executor.shutdown()
    assert own_nice() == base  # the calling thread is left as it was


def test_nice_zero_leaves_the_thread_at_the_loops_priority():
    executor = DaemonThreadExecutor("engine-test")
    try:
        assert executor.submit(own_nice).result(timeout=10) == own_nice()
    finally:
        executor.shutdown()
