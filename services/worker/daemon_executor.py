"""An executor with one daemon thread: an engine instance's thread that exit never waits for.

Each engine instance loads, warms up and runs its batches on one thread of its own. With
a ``ThreadPoolExecutor`` that thread is joined when the interpreter exits, so an engine
stuck in ``load()`` (an artifact that takes forever to build or to warm up) would keep a
SIGTERMed worker from ever exiting. This executor runs calls in submission order on one
daemon thread; a clean shutdown still drains it (``shutdown(wait=True)``), and a stuck
call no longer holds the process.

``nice`` lowers the thread's scheduling priority (Linux gives each thread its own nice
value; threads an engine starts from it, such as an intra-op pool, inherit it). With
``--engine-nice`` the engine instances run below the event loop: on a worker with fewer
cores than runnable threads, an engine running many small batches otherwise takes the
CPU the loop needs to receive requests, so fewer arrive per batch and batches stay small
(the vicious circle measured in README "config.yaml").
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

logger = logging.getLogger(__name__)

_Work = tuple[Future, Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonThreadExecutor(Executor):
    def __init__(self, name: str, nice: int = 0) -> None:
        self._nice = nice
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._shutdown = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future = Future()
            self._queue.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if not self._shutdown:
                self._shutdown = True
                if cancel_futures:
                    self._cancel_queued()
                self._queue.put(None)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def _cancel_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[0].cancel()

    def _run(self) -> None:
        if self._nice:
            lower_priority(self._nice)
        while (item := self._queue.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # the caller's future carries it
                future.set_exception(exc)
            else:
                future.set_result(result)


def lower_priority(nice: int) -> None:
    """Add ``nice`` to the calling thread's nice value (Linux: per thread; elsewhere, a no-op).

    Raising one's own nice value needs no privilege; a platform or sandbox that refuses
    it leaves the thread as it was, with a warning, rather than failing the engine.
    """
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:
        logger.warning("cannot lower the priority of engine thread %d by %d: %s", tid, nice, exc)
