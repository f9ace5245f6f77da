"""``mimic web`` with several worker processes (``MIMIC_WEB_WORKERS``) on one listening socket.

One process serves HTTP on one core (the GIL): a small WADO-RS retrieve is a few
milliseconds of Python, so a second core needs a second process. The parent binds the port
once (a taken port fails the start, a second ``mimic web`` on it still fails) and runs
uvicorn's own multiprocess supervisor over that socket: each worker is a spawned process
that builds the whole DICOMweb + console app from the settings (the ASGI factory named in
``factory``), accepts from the shared backlog, and is replaced when it dies or stops
answering the supervisor's pings; a worker that cannot start (a configuration error: exit
code ``STARTUP_FAILURE``) stops the whole server instead of looping. A death or a kill for not
answering is logged at ERROR (uvicorn said nothing MIMIC's log kept: a worker killed by the
kernel for memory, with the requests it was answering, went unseen), and one that keeps
dying young is restarted after a back-off, as ``mimic serve``'s workers are. ``mimic serve``'s own
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
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from mimic_server.web.server import uvicorn_options

log = logging.getLogger(__name__)

#: Seconds a worker may take to build its app and accept requests.
START_TIMEOUT = 120.0
#: A worker that dies younger than this (seconds) counts towards a crash loop; its
#: replacement waits a back-off that doubles from the first to the last (``mimic serve``'s).
CRASH_WINDOW = 30.0
FIRST_BACKOFF, LONGEST_BACKOFF = 0.5, 60.0


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
        self._started: dict[int, float] = {}  # a slot's current worker: when it started
        self._young_deaths: dict[int, int] = {}
        self._restart_at: dict[int, float] = {}  # a slot whose replacement waits its back-off

    def init_processes(self) -> None:
        """Start the workers and wait until each serves; then say the server is listening."""
        super().init_processes()
        self._started = dict.fromkeys(range(len(self.processes)), time.monotonic())
        for process in self.processes:
            if not process.wait_until_ready(START_TIMEOUT, self.should_exit):
                self.failed = not self.should_exit.is_set()
                self.should_exit.set()
                return
        self.on_ready()

    def keep_subprocess_alive(self) -> None:
        """uvicorn's, every half second: a worker that died or does not answer its ping is
        (killed and) replaced, and one that could not start stops the server; here each is
        logged at ERROR, and a worker that died within ``CRASH_WINDOW`` of its start is
        replaced after a back-off (0.5 s, 1 s, 2 s ... 60 s) rather than at once, without
        end."""
        if self.should_exit.is_set():
            return
        now = time.monotonic()
        for index, process in enumerate(self.processes):
            due = self._restart_at.get(index)
            if due is not None:
                if now >= due:
                    del self._restart_at[index]
                    self._replace(index)
                continue
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            hung = process.exitcode is None
            process.kill()  # a hung one; a dead one's pipe closed
            process.join()
            code = process.exitcode
            if code == STARTUP_FAILURE:
                log.error("mimic web worker could not start; stopping the server",
                          extra={"pid": process.pid})
                self.failed = True
                self.should_exit.set()
                return
            young = now - self._started.get(index, now) < CRASH_WINDOW
            deaths = self._young_deaths.get(index, 0) + 1 if young else 0
            self._young_deaths[index] = deaths
            delay = 0.0 if not deaths else min(LONGEST_BACKOFF,
                                                FIRST_BACKOFF * 2 ** (deaths - 1))
            log.error(
                "web worker did not answer; killed and replacing it" if hung
                else "web worker died; replacing it",
                extra={"worker": index, "pid": process.pid, **_exit_fields(code),
                       "restart_in_seconds": delay, "young_deaths": deaths},
            )
            if delay:
                self._restart_at[index] = now + delay
            else:
                self._replace(index)

    def _replace(self, index: int) -> None:
        process = Process(self.config, self.sockets)
        process.start()
        self.processes[index] = process
        self._started[index] = time.monotonic()

    def handle_hup(self) -> None:
        """Each worker reads its policy file again (its own SIGHUP handler). Not one still
        starting: SIGHUP would end it before its handler is set (it reads the file anyway)."""
        for process in self.processes:
            if process.pid is not None and process.is_ready(timeout=1):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]


def _exit_fields(code: int | None) -> dict[str, Any]:
    """A worker's end for the log: ``signal`` by name, or ``exit_code``."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return {"signal": signal.Signals(-code).name}
        return {"signal": -code}
    return {"exit_code": code}
