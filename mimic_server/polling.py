"""A source polled every period in a thread of its own, at once on request (SIGHUP).

The certificate watcher and the policy watcher share this loop; each says in ``poll()`` what
a change means. A bottom module: it knows nothing of the rooms that use it.
"""

from __future__ import annotations

import threading


class Poller:
    """Calls :meth:`poll` every ``period`` seconds, or at once after :meth:`refresh_now`."""

    #: What :meth:`refresh_now` forgets so that the next poll reads the source whole.
    _version: str | None

    def __init__(self, period: float, name: str) -> None:
        self.period = period
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def refresh_now(self) -> None:
        """Read the source again at once (SIGHUP); safe to call from a signal handler."""
        self._version = None
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.period)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.poll()

    def poll(self) -> bool:
        """Look at the source once; True if something new was applied."""
        raise NotImplementedError
