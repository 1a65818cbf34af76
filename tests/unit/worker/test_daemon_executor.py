"""DaemonThreadExecutor: in-order calls on one daemon thread, results and errors through futures."""

from __future__ import annotations

import threading

import pytest

from services.worker.daemon_executor import DaemonThreadExecutor


def test_runs_calls_in_order_on_one_daemon_thread() -> None:
    executor = DaemonThreadExecutor("test-instance")
    seen: list[tuple[int, str, bool]] = []

    def record(i: int) -> int:
        thread = threading.current_thread()
        seen.append((i, thread.name, thread.daemon))
        return i * 2

    futures = [executor.submit(record, i) for i in range(5)]
    assert [f.result(timeout=10) for f in futures] == [0, 2, 4, 6, 8]
    assert seen == [(i, "test-instance", True) for i in range(5)]
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(record, 9)


def test_errors_reach_the_future_and_the_thread_goes_on() -> None:
    executor = DaemonThreadExecutor("t")

    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        executor.submit(fail).result(timeout=10)
    assert executor.submit(lambda: "still here").result(timeout=10) == "still here"
    executor.shutdown()


def test_shutdown_without_waiting_cancels_what_is_queued_behind_a_stuck_call() -> None:
    executor = DaemonThreadExecutor("t")
    started, release = threading.Event(), threading.Event()

    def hang() -> bool:
        started.set()
        return release.wait()

    stuck = executor.submit(hang)
    assert started.wait(timeout=10)
    queued = executor.submit(lambda: "never")
    executor.shutdown(wait=False, cancel_futures=True)  # returns while the call is stuck
    assert queued.cancelled()
    release.set()
    assert stuck.result(timeout=10) is True
