"""The benchmarks' wait for a sender or retriever process (``store_throughput.wait_exited``):
its exit status, its timeout, and no polling (``Popen.wait`` with a timeout sleeps up to
50 ms at a time, which put every timed run on a 50 ms grid). No timing thresholds."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.store_throughput import wait_exited


def _sleeper(seconds: float, code: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", f"import sys, time; time.sleep({seconds}); sys.exit({code})"])


def test_the_exit_status_of_a_process_still_running_and_of_one_ended() -> None:
    running = _sleeper(0.3, 3)
    assert running.poll() is None
    assert wait_exited(running, 30) == 3
    ended = _sleeper(0, 4)
    ended.wait()
    assert wait_exited(ended, 30) == 4


def test_a_process_that_outlives_the_timeout_is_timed_out_and_left_running() -> None:
    proc = _sleeper(30)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_exited(proc, 0.2)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_the_wait_sleeps_on_the_process_not_in_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``Popen.wait(timeout)`` sleeps between looks, this waits on the process's pidfd:
    no sleep at all."""
    naps: list[float] = []
    real_sleep = time.sleep

    def noted_sleep(seconds: float) -> None:
        naps.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", noted_sleep)
    time.sleep(0.001)  # what Popen.wait(timeout) calls between its looks (Python 3.11)
    assert naps == [0.001]  # the note works
    naps.clear()
    waited = _sleeper(0.3)
    assert wait_exited(waited, 30) == 0
    assert naps == []
