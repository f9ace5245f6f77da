"""Threads beside an association's own, for the ingest's work that overlaps a wait.

``archive.ingest.keep`` hands one task at a time per C-STORE (or STOW-RS part) to a helper: a
put that runs beside PostgreSQL's round trips, or a large object's SHA-256 beside its put. A
``concurrent.futures.ThreadPoolExecutor`` keeps every thread it ever made until the process
ends, so a burst of 30 associations left 30 idle threads for good. Here a thread is made when
no idle one is there and ends after ``idle`` seconds without work; a steady stream of
C-STOREs keeps reusing the same few. No bound on their number is needed: each C-STORE or part
in progress has at most one task here, and associations (``MIMIC_MAX_ASSOCIATIONS``) and the
web server's worker threads are bounded already.

Each idle thread waits on its own inbox, so a task always goes to a thread that is free: a
thread whose wait ran out checks, under the lock, whether a task was handed to it meanwhile.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a helper thread waits for its next task before it ends.
IDLE_SECONDS = 5.0

_Task = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class HelperThreads:
    """``submit(fn, *args) -> Future``, on threads that end when idle."""

    def __init__(self, name: str, idle: float = IDLE_SECONDS) -> None:
        self._name = name
        self._idle_seconds = idle
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Task]] = []  # the inboxes of idle threads
        self._made = 0

    @property
    def threads(self) -> int:
        """Helper threads alive (busy or idle)."""
        with self._lock:
            return self._made

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        task: _Task = (future, fn, args)
        with self._lock:
            if self._idle:
                self._idle.pop().put(task)  # the most recently idle: keeps few threads warm
                return future
            self._made += 1
            number = self._made
        inbox: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        inbox.put(task)
        threading.Thread(target=self._work, args=(inbox,), name=f"{self._name}-{number}",
                         daemon=True).start()
        return future

    def _work(self, inbox: queue.SimpleQueue[_Task]) -> None:
        task = inbox.get()
        while True:
            _run(task)
            del task  # hold nothing of it while idle
            with self._lock:
                self._idle.append(inbox)
            try:
                task = inbox.get(timeout=self._idle_seconds)
                continue  # handed over by submit, which took the inbox off the idle list
            except queue.Empty:
                pass
            with self._lock:
                if inbox in self._idle:  # nobody handed it a task: end
                    self._idle.remove(inbox)
                    self._made -= 1
                    return
            task = inbox.get()  # handed over between the wait's end and the lock


def _run(task: _Task) -> None:
    future, fn, args = task
    try:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # the submitter's to handle, through its future
                future.set_exception(exc)
    finally:
        # A failure's traceback holds this frame, and the future holds the failure: without
        # these, no cycle keeps the work's arguments (a received object) until a collection.
        task = future = fn = args = None  # type: ignore[assignment]
