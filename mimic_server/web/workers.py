"""``mimic web`` with several worker processes (``MIMIC_WEB_WORKERS``) on one listening socket.

One process serves HTTP on one core (the GIL): a small WADO-RS retrieve is a few
milliseconds of Python, so a second core needs a second process. The parent binds the port
once (a taken port fails the start, a second ``mimic web`` on it still fails) and runs
uvicorn's own multiprocess supervisor over that socket: each worker is a spawned process
that builds the whole DICOMweb + console app from the settings (the ASGI factory named in
``factory``), accepts from the shared backlog, and is replaced when it dies or stops
answering the supervisor's pings; a worker that cannot start (a configuration error: exit
code ``STARTUP_FAILURE``) stops the whole server instead of looping. ``mimic serve``'s own
supervisor (``workers/``) is not reused: it is built around the DICOM archive (association
table, certificate dates, ops endpoints), while every piece of HTTP state here lives in the
workers or is shared by design (see ``webapp.py``).

Signals: SIGTERM/SIGINT stop the workers (each finishes its requests in flight, 2 s at most)
and then the parent; SIGHUP is forwarded to the workers that serve, and each reads its
policy file again (as a single ``mimic web`` does), rather than uvicorn's default of
restarting every worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

from mimic_server.web.server import uvicorn_options

log = logging.getLogger(__name__)

#: Seconds a worker may take to build its app and accept requests.
START_TIMEOUT = 120.0


class WebWorkers(Multiprocess):
    """uvicorn's supervisor with MIMIC's start, readiness report and SIGHUP."""

    def __init__(self, factory: str, sockets: list[socket.socket], count: int,
                 on_ready: Callable[[], None] = lambda: None) -> None:
        config = uvicorn.Config(factory, factory=True, workers=count, lifespan="on",
                                **uvicorn_options())
        super().__init__(config, sockets)
        self.on_ready = on_ready
        #: True when a worker could not start (the server then stops: exit code 2).
        self.failed = False

    def init_processes(self) -> None:
        """Start the workers and wait until each serves; then say the server is listening."""
        super().init_processes()
        for process in self.processes:
            if not process.wait_until_ready(START_TIMEOUT, self.should_exit):
                self.failed = not self.should_exit.is_set()
                self.should_exit.set()
                return
        self.on_ready()

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        if any(p.exitcode == STARTUP_FAILURE for p in self.processes):
            self.failed = True

    def handle_hup(self) -> None:
        """Each worker reads its policy file again (its own SIGHUP handler). Not one still
        starting: SIGHUP would end it before its handler is set (it reads the file anyway)."""
        for process in self.processes:
            if process.pid is not None and process.is_ready(timeout=1):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]
