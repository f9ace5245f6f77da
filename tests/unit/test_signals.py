"""What a signal handler does must survive a second signal arriving at any moment of it.

A Python handler runs in the main thread between two bytecodes, and a second signal's handler
runs nested inside the first: a handler that takes a lock (``threading.Event.set()`` does)
deadlocks its own thread when the interrupted code holds it. A ``mimic serve`` worker hung so
(the supervisor's SIGHUP and its relay arrived together). Each check here runs in a child
process, with a trace function that delivers a signal at every line of the code under test
(one level deep, up to a hundred): a deadlock ends the child by the timeout, not the test session.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from mimic_server.signals import SignalInbox

#: Prepended to each child's script: ``nested(func)`` runs ``func()`` with SIGUSR1 delivered
#: at each of its lines and its callees', whose handler is ``on_signal`` (set by the script).
INJECTOR = textwrap.dedent("""
    import os, signal, sys

    LIMIT = 100  # a loop that reads what the signals write would otherwise never end

    def nested(func):
        depth = 0
        delivered = 0

        def tracer(frame, event, arg):
            nonlocal delivered
            if event == "line" and depth == 1 and delivered < LIMIT:
                delivered += 1
                os.kill(os.getpid(), signal.SIGUSR1)  # its handler runs at the next bytecode
            return tracer

        def outer():
            nonlocal depth
            depth += 1
            try:
                func()
            finally:
                depth -= 1

        sys.settrace(tracer)
        try:
            outer()
        finally:
            sys.settrace(None)
        return delivered
""")


def run_child(script: str, timeout: float = 20.0) -> str:
    try:
        done = subprocess.run(
            [sys.executable, "-c", INJECTOR + textwrap.dedent(script)],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the main thread deadlocked in a nested signal handler")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_refresh_now_nested_in_itself_returns_and_the_source_is_read() -> None:
    """SIGHUP's action on a watcher (``Poller.refresh_now``), interrupted at each of its lines
    by another SIGHUP doing the same: both return, and the poller reads the source."""
    out = run_child("""
        import threading
        from mimic_server.polling import Poller

        class Source(Poller):
            polled = threading.Semaphore(0)
            def poll(self):
                self.polled.release()
                return True

        poller = Source(3600, "test-poller")
        poller.start()
        signal.signal(signal.SIGUSR1, lambda *_: poller.refresh_now())
        delivered = nested(poller.refresh_now)
        assert delivered > 0
        assert Source.polled.acquire(timeout=10), "no poll after refresh_now"
        poller.stop()
        print("ok", delivered)
    """)
    assert out.startswith("ok")


def test_supervisor_requests_nested_in_each_other_return() -> None:
    """The supervisor's SIGTERM and SIGHUP handlers, each interrupted at every line by the
    other: both return, and its main loop is told both."""
    out = run_child("""
        import tempfile
        from pathlib import Path
        from mimic_server.config import Settings
        from mimic_server.workers.supervisor import Supervisor

        supervisor = Supervisor(Settings(data_dir=Path(tempfile.mkdtemp())), {}, 2)
        signal.signal(signal.SIGUSR1, lambda *_: supervisor.request_stop())
        assert nested(supervisor.request_hup) > 0
        signal.signal(signal.SIGUSR1, lambda *_: supervisor.request_hup())
        assert nested(supervisor.request_stop) > 0
        assert supervisor._stopping and supervisor._hup_requested
        supervisor._close()
        print("ok")
    """)
    assert out.startswith("ok")


def test_the_inbox_reports_signals_that_arrive_while_it_reads() -> None:
    """The main loop's read of the inbox interrupted at each line by a signal: it returns,
    and the signal is reported (by that read or the next), never lost."""
    out = run_child("""
        from mimic_server.signals import SignalInbox

        inbox = SignalInbox((signal.SIGUSR1, signal.SIGUSR2))
        inbox.install()
        seen = []
        delivered = nested(lambda: seen.extend(inbox.wait(0)))
        assert delivered > 0
        seen.extend(inbox.wait(0))
        assert seen == [signal.SIGUSR1], seen
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert inbox.wait(1) == [signal.SIGUSR2, signal.SIGUSR1]  # each once, in order
        assert inbox.wait(0) == []
        inbox.close()
        print("ok")
    """)
    assert out.startswith("ok")


def test_a_closed_inbox_gives_the_handlers_back() -> None:
    previous = signal.getsignal(signal.SIGUSR1)
    inbox = SignalInbox((signal.SIGUSR1,))
    inbox.install()
    try:
        assert signal.getsignal(signal.SIGUSR1) is not previous
        signal.raise_signal(signal.SIGUSR1)  # noted, not acted on: the process lives
        assert inbox.wait(5) == [signal.SIGUSR1]
    finally:
        inbox.close()
    assert signal.getsignal(signal.SIGUSR1) == previous


def test_a_stop_passed_on_twice_is_one_and_one_a_second_later_is_repeated() -> None:
    """coreutils ``timeout`` (and scripts that signal a process and its group) deliver one
    stop twice, milliseconds apart: that is not the operator's second stop, which would
    abort the associations the stop was to drain. One that comes REPEAT_AFTER after the
    first is."""
    from mimic_server.signals import REPEAT_AFTER, StopRequests

    now = [50.0]
    stops = StopRequests(clock=lambda: now[0])
    assert not stops.repeated
    stops.note()
    now[0] += 0.002
    stops.note()
    now[0] += REPEAT_AFTER - 0.01
    stops.note()  # still within REPEAT_AFTER of the first
    assert not stops.repeated
    now[0] += 0.01
    stops.note()
    assert stops.repeated
