"""A source polled every period in a thread of its own, at once on request (SIGHUP).

The certificate watcher and the policy watcher share this loop; each says in ``poll()`` what
a change means. A bottom module: it knows nothing of the rooms that use it.

:meth:`Poller.refresh_now` takes no lock: it writes a byte to a socket the loop waits on. A
``threading.Event`` here once hung a worker: ``Event.set()`` takes the Event's lock, and a
SIGHUP handler calling it, interrupted by a second SIGHUP whose handler called it again,
waited for the lock its own thread held (``mimic_server/signals.py``); the poller thread, which
needs that lock to leave ``Event.wait``, hung with it.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading

log = logging.getLogger(__name__)


class Poller:
    """Calls :meth:`poll` every ``period`` seconds, or at once after :meth:`refresh_now`."""

    #: What :meth:`refresh_now` forgets so that the next poll reads the source whole.
    _version: str | None

    def __init__(self, period: float, name: str) -> None:
        self.period = period
        self._stopping = False
        # A closed socket refuses a late send (OSError), where a closed pipe's number could
        # already name another file.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._wake_r.close()
            self._wake_w.close()

    def refresh_now(self) -> None:
        """Read the source again at once (SIGHUP); takes no lock, so it is safe in a signal
        handler, nested in another call of itself included."""
        self._version = None
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending; closed: stopped
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                selector.select(self.period)
                with contextlib.suppress(OSError):  # wake-ups while it polled: one poll
                    while self._wake_r.recv(4096):
                        pass
                if self._stopping:
                    return
                try:
                    self.poll()
                except Exception as exc:  # the loop outlives one bad poll
                    # A poll that raises what it did not expect must not end the loop: every
                    # later change, a revocation's included, would go unseen until a restart.
                    log.error("a poll failed; the last good state stays in force, "
                              "the next poll tries again", exc_info=exc,
                              extra={"poller": self._thread.name, "error": type(exc).__name__})

    def poll(self) -> bool:
        """Look at the source once; True if something new was applied."""
        raise NotImplementedError
