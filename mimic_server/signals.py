"""Signals handed to a process's main loop, acted on there and never in a handler.

Why: a Python signal handler runs in the main thread between two bytecodes of whatever that
thread was doing, and a second signal can arrive while the first handler runs, which then runs
nested inside it. A handler that takes a lock therefore deadlocks its own thread when the
interrupted code, or the interrupted handler, holds that lock: ``threading.Event.set()`` takes
the Event's condition lock, a plain ``Lock``. Seen in a ``mimic serve`` worker: the supervisor's
SIGHUP and its relayed SIGHUP (another worker found the trust set changed) arrived together,
the second handler's ``Event.set()`` waited on the lock the first one held, the main thread
hung, and with it the certificate watcher (waiting for that lock to leave ``Event.wait``) and
the drain (the main loop never woke). Here the handlers are Python's C handler alone: it writes
the signal's number to a wake-up pipe (``signal.set_wakeup_fd``) and takes no lock; the Python
handler installed does nothing. The main loop reads the numbers and acts, in ordinary code.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

#: What the supervisor of ``mimic serve`` sends its workers when the operator repeats the
#: stop (a second SIGTERM or SIGINT): abort the open associations and stop now, without
#: draining or with the drain cut short. A signal no service manager sends on a stop, so
#: that nothing but the supervisor's relay of that second stop ends a worker's drain early.
STOP_NOW = signal.SIGUSR1

#: Seconds after a first stop (SIGTERM or SIGINT) within which another is that same stop
#: passed on twice, not the operator's second: coreutils ``timeout`` signals its command and
#: then the command's process group, and so do scripts (``kill $PID; kill -- -$PGID``), a
#: few milliseconds apart. Taken for a second stop, it aborted the open associations that
#: the stop was to drain. An operator repeating Ctrl-C does so later than this.
REPEAT_AFTER = 1.0


class StopRequests:
    """The stops asked for so far (SIGTERM, SIGINT): whether the operator repeated one.

    :meth:`note` takes no lock and may be called from a signal handler."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._first: float | None = None
        #: True once a stop came :data:`REPEAT_AFTER` seconds or more after the first.
        self.repeated = False

    def note(self) -> None:
        now = self._clock()
        if self._first is None:
            self._first = now
        elif now - self._first >= REPEAT_AFTER:
            self.repeated = True


def _noted(signum: int, frame: FrameType | None) -> None:
    """The Python handler: nothing. The C handler has written ``signum`` to the pipe, and
    installing a Python handler is what replaces the default action (SIGHUP, SIGTERM end the
    process)."""


class SignalInbox:
    """The signals ``signums`` as numbers read by :meth:`wait`, in the main thread."""

    def __init__(self, signums: Iterable[int]) -> None:
        self.signums = tuple(signums)
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_fd: int | None = None
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
        self._installed = False

    def install(self) -> None:
        """From now on these signals are noted, not acted on by their handlers (call in the
        main thread: ``set_wakeup_fd`` and ``signal.signal`` refuse any other)."""
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._installed = True
        for signum in self.signums:
            self._previous[signum] = signal.signal(signum, _noted)
        # Noted from now on: a signal its parent had blocked until here (a worker of
        # ``mimic serve`` starts with SIGHUP blocked, ``workers/supervisor.py``) is let in,
        # and one that came meanwhile is noted now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signums)

    def wait(self, timeout: float | None) -> list[int]:
        """The signals that arrived since the last call, each once, in order of arrival;
        waits up to ``timeout`` seconds for one (None: without end)."""
        poller = select.poll()
        poller.register(self._read, select.POLLIN)
        poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        arrived: list[int] = []
        while True:
            try:
                data = os.read(self._read, 4096)
            except BlockingIOError:
                break
            if not data:
                break
            for signum in data:
                if signum not in arrived:
                    arrived.append(signum)
        return [s for s in arrived if s in self.signums]

    def close(self) -> None:
        """The previous handlers and wake-up fd again; the pipe closed."""
        if self._installed:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
            self._installed = False
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)
