"""The operations endpoints: liveness, readiness, Prometheus metrics and the console's
``/status/associations`` (a Starlette app).

``/healthz`` answers whether the process should be restarted, ``/readyz`` whether it should
receive new associations now, ``/metrics`` what it has done. The app is told nothing of
DICOM: it receives small callables from the composition root (``app.py``), so it can be
mounted beside the later DICOMweb routes on the same ASGI stack.

Each readiness check runs in a worker thread with a deadline: a database that hangs makes
``/readyz`` answer 503 within the deadline, never hang the prober. A check still running
from an earlier probe is not started again (a hung database must not pile up threads); it
answers "timeout" until it returns.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mimic_server.errors import MimicError

log = logging.getLogger(__name__)


class Exposition(Protocol):
    """What ``/metrics`` reads: one archive's metrics, or a supervisor's sum of its workers'."""

    def exposition(self) -> bytes: ...

#: A readiness check: returns a short, secret-free description of what it found, or raises
#: an exception whose message (first line, truncated) says what is wrong.
Check = Callable[[], str]


@dataclass
class OpsState:
    """What the endpoints read from the running archive."""

    alive: Callable[[], bool]
    draining: Callable[[], bool]
    checks: dict[str, Check]
    metrics: Exposition
    check_timeout: float = 2.0
    #: The open associations and per-minute counts (``web.activity``), for the console.
    status: Callable[[], dict[str, object]] | None = None
    _running: dict[str, threading.Lock] = field(default_factory=dict)
    _last_ready: bool | None = None

    def __post_init__(self) -> None:
        self._running = {name: threading.Lock() for name in self.checks}


def _describe(exc: BaseException) -> str:
    """A check's failure as one short line that is safe to show any prober.

    MIMIC's own errors say what is wrong in words written for operators, without secrets.
    Anything else (a driver's error names hosts, ports, users, SQL) is named by its type
    only; the log has the rest.
    """
    if isinstance(exc, MimicError):
        text = str(exc).strip().splitlines()
        return text[0][:200] if text else type(exc).__name__
    return type(exc).__name__


class _StillRunning(Exception):
    """The same check from an earlier probe has not returned."""


async def _run_check(state: OpsState, name: str, check: Check) -> tuple[bool, str]:
    lock = state._running[name]

    def guarded() -> str:
        # Taken and released in the worker: a job the deadline cancels before it starts is
        # never run by anyio, and a lock taken outside it would then be held for ever.
        if not lock.acquire(blocking=False):
            raise _StillRunning
        try:
            return check()
        finally:
            lock.release()

    result: tuple[bool, str] = (False, f"timeout after {state.check_timeout:g} s")
    with anyio.move_on_after(state.check_timeout):
        try:
            result = True, await anyio.to_thread.run_sync(guarded, abandon_on_cancel=True)
        except _StillRunning:
            result = False, "timeout (an earlier check has not returned)"
        except Exception as exc:
            log.debug("readiness check failed", extra={"check": name, "error": str(exc)})
            result = False, _describe(exc)
    return result


def build_app(state: OpsState) -> Starlette:
    """The ops routes over ``state``; no middleware, no sessions, nothing stored."""

    async def healthz(request: Request) -> Response:
        alive, draining = state.alive(), state.draining()
        ok = alive or draining  # a drain stops the listener on purpose: still healthy
        body = {
            "status": "alive" if ok else "dead",
            "listener": "alive" if alive else ("stopped for drain" if draining else "dead"),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    async def readyz(request: Request) -> Response:
        results: dict[str, dict[str, object]] = {}

        async def one(name: str, check: Check) -> None:
            ok, detail = await _run_check(state, name, check)
            results[name] = {"ok": ok, "detail": detail}

        async with anyio.create_task_group() as group:
            for name, check in state.checks.items():
                group.start_soon(one, name, check)
        draining = state.draining()
        results["draining"] = {
            "ok": not draining, "detail": "draining (SIGTERM)" if draining else "no",
        }
        checks = {name: results[name] for name in [*state.checks, "draining"]}
        ready = all(r["ok"] for r in checks.values())
        if ready != state._last_ready:  # log the changes, not every probe
            failed = [name for name, r in checks.items() if not r["ok"]]
            log.log(
                logging.INFO if ready or state._last_ready is None else logging.WARNING,
                "ready" if ready else "not ready", extra={"failed_checks": failed},
            )
            state._last_ready = ready
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    async def metrics(request: Request) -> Response:
        # In a thread: a supervisor first asks each worker to write its sampled values.
        body = await anyio.to_thread.run_sync(state.metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def status(request: Request) -> Response:
        # Peers, AE titles, identities, users and counts: no patient data (web/activity.py).
        if state.status is None:
            return JSONResponse({"error": "no status"}, status_code=404)
        return JSONResponse(await anyio.to_thread.run_sync(state.status))

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/status/associations", status, methods=["GET"]),
        ]
    )
