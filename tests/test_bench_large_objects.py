"""The very-large-object memory benchmark still runs, and reads the server's memory as it
says: the transfer and the C-GET of objects past the in-memory bound (so spooled and
streamed), every object stored and retrieved byte-identical, and the memory of a process
family counted with its shared pages once. Figures belong to ``bench/`` runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import large_objects

ROOT = Path(__file__).resolve().parents[1]


def test_spooled_stores_and_a_streamed_get_are_measured(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "large_objects.py"), "--size-mib", "12",
         "--count", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "stored 2/2" in done.stdout
    assert "status 0x0000, byte-identical: True" in done.stdout
    figures = re.search(r"idle (\d+) MB \(summed RSS (\d+) MB\); during the C-STOREs peak "
                        r"(\d+) MB \(summed RSS (\d+) MB\); (\d+) samples", done.stdout)
    assert figures is not None, done.stdout
    idle, idle_rss, peak, peak_rss, _ = (int(g) for g in figures.groups())
    # two readings: pages may move between private and shared as other processes map the
    # same libraries, so no order between idle and peak is asserted
    assert 0 < idle <= idle_rss and 0 < peak <= peak_rss


def test_one_process_is_its_rss_and_shared_pages_count_once() -> None:
    # a parent (the supervisor's place) and its child (a worker's), the same interpreter,
    # both started before anything is read
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c',\n"
        "    'import time; print(flush=True); time.sleep(60)'], stdout=subprocess.PIPE)\n"
        "child.stdout.readline()\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert sorted(large_objects._family(parent.pid)) == sorted([parent.pid, child])
        alone = large_objects._memory_of([child])
        both = large_objects._memory_of([parent.pid, child])
    finally:
        for pid in large_objects._family(parent.pid):
            os.kill(pid, signal.SIGKILL)
        parent.wait()
    assert alone.unique == alone.rss > 0  # one process: its private and shared pages
    # two: the interpreter's pages they share count once, not once per process
    assert both.rss > alone.rss and both.unique < both.rss


def test_a_sampler_that_fails_says_so(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    def broken(pid: int) -> large_objects.Memory:
        raise PermissionError("smaps_rollup")

    monkeypatch.setattr(large_objects, "_memory", broken)
    with pytest.raises(RuntimeError, match="sampling the server's memory failed"), \
            large_objects.PeakMemory(os.getpid()):
        pass
    # the transfer's own failure is not hidden behind the sampler's
    with pytest.raises(ConnectionError, match="the C-GET"), \
            large_objects.PeakMemory(os.getpid()):
        raise ConnectionError("the C-GET")
    assert "sampling the server's memory failed too" in capsys.readouterr().err
