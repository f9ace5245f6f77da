"""The ingest's helper threads: every task runs on a free thread at once, results and errors
come back through the future, a thread is reused while work keeps coming and ends when it
does not, and no task is ever left behind by a thread that was just ending."""

from __future__ import annotations

import threading
import time

import pytest

from mimic_server.archive.helper_threads import HelperThreads


def _wait_for(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def _alive(name: str) -> int:
    return sum(t.name.startswith(f"{name}-") for t in threading.enumerate())


def test_results_and_errors_come_back_through_the_future() -> None:
    helpers = HelperThreads("test-helper")
    assert helpers.submit(pow, 2, 10).result(10) == 1024
    with pytest.raises(ZeroDivisionError):
        helpers.submit(divmod, 1, 0).result(10)


def test_tasks_given_at_once_all_run_at_once() -> None:
    """Eight tasks that each wait for the other seven: none may queue behind a busy one."""
    helpers = HelperThreads("test-helper")
    barrier = threading.Barrier(8, timeout=10)
    futures = [helpers.submit(barrier.wait) for _ in range(8)]
    assert sorted(f.result(15) for f in futures) == list(range(8))
    assert helpers.threads == 8


def test_a_thread_is_reused_while_work_comes_and_ends_when_it_stops() -> None:
    helpers = HelperThreads("test-reused", idle=0.3)
    names = set()
    for _ in range(20):
        names.add(helpers.submit(lambda: threading.current_thread().name).result(10))
    assert len(names) == 1 and helpers.threads == 1
    assert _wait_for(lambda: helpers.threads == 0)
    assert _wait_for(lambda: _alive("test-reused") == 0)
    assert helpers.submit(pow, 3, 2).result(10) == 9  # a new one once needed again


def test_no_task_is_left_behind_by_a_thread_ending_as_it_is_given_one() -> None:
    """Idle times of a millisecond: submits land on threads whose wait is running out."""
    helpers = HelperThreads("test-helper", idle=0.001)
    for n in range(2000):
        assert helpers.submit(int, n).result(10) == n
        if n % 7 == 0:
            time.sleep(0.001)
    assert _wait_for(lambda: helpers.threads == 0)
