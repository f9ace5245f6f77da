"""Runs an ASGI app on uvicorn in a thread of the ``mimic serve`` process.

The DICOM listener owns the main thread's signals; uvicorn gets a thread and an event loop of
its own, and installs no signal handlers there (it only does so in the main thread). The
socket is bound here, before the thread starts, so a port in use is a configuration error
at start, not a log line from a dying thread.

uvicorn's main loop wakes ten times a second (``Server.main_loop``: ``asyncio.sleep(0.1)``,
then ``on_tick``, which refreshes the Date header once a second and looks at
``should_exit``); :class:`_QuietServer` ticks once a second, as often as the Date header
changes, and :meth:`HttpServer.stop` wakes it at once. Three such servers (the supervisor's
ops endpoints and each worker's status port) were a fifth of an idle ``mimic serve``'s CPU.

Logging: uvicorn's own logging configuration is not applied (``log_config=None``); its
loggers propagate to MIMIC's JSON handler. The access log is off: request lines would carry
query strings, which a later DICOMweb API fills with patient identifiers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from mimic_server.errors import ConfigurationError

log = logging.getLogger(__name__)


def listen(host: str, port: int, name: str) -> socket.socket:
    """The HTTP listening socket (non-blocking); ConfigurationError when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP, and without it Nagle holds the body behind the headers until the peer's
    # delayed ACK (40 ms per keep-alive request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            f"cannot listen for {name} HTTP on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    sock.setblocking(False)
    return sock


def uvicorn_options() -> dict[str, Any]:
    """How MIMIC runs uvicorn, in a thread here and in ``mimic web``'s worker processes."""
    return {
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": 2,
        "timeout_keep_alive": 5,
    }


#: Seconds between two ticks of uvicorn's main loop here (its own: 0.1).
TICK = 1.0


class _QuietServer(uvicorn.Server):
    """uvicorn's server with a main loop that ticks every :data:`TICK` seconds and wakes at
    once when asked to exit. ``on_tick(0)`` each time: uvicorn refreshes the Date header
    when its counter is a multiple of ten, that is once a second, as here. Where uvicorn
    no longer has ``on_tick`` its own main loop runs."""

    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        if not hasattr(uvicorn.Server, "on_tick"):
            await super().main_loop()
            return
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()  # after _wake: request_exit reads in order
        while not await self.on_tick(0):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)

    def request_exit(self) -> None:
        """From any thread: exit now (before the loop runs, its first tick sees it)."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: it has exited
                loop.call_soon_threadsafe(wake.set)


class HttpServer:
    """One uvicorn server on ``host:port``, started and stopped from the archive."""

    def __init__(self, app: Any, host: str, port: int, *, name: str = "ops") -> None:
        self.name = name
        self._socket = listen(host, port, name)
        config = uvicorn.Config(app, lifespan="off", **uvicorn_options())
        self._server = _QuietServer(config)
        self._thread = threading.Thread(
            target=self._run, name=f"mimic-{name}-http", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    def alive(self) -> bool:
        """True while uvicorn serves (its thread has not ended)."""
        return self._thread.is_alive() and bool(self._server.started)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException:  # uvicorn exits with SystemExit on a startup failure
            log.exception("HTTP server stopped", extra={"server": self.name})

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; return once uvicorn accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigurationError(f"the {self.name} HTTP server did not start")
            time.sleep(0.01)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, finish the requests in flight (2 s at most), close the socket."""
        self._server.request_exit()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with contextlib.suppress(OSError):
            self._socket.close()
