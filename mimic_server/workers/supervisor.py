"""``mimic serve`` with several workers: a supervisor process and its worker processes.

The supervisor binds the DICOM port once, starts ``MIMIC_WORKERS`` workers (``python -m
mimic_server serve-worker``), each a full :class:`~mimic_server.app.Archive` on the
inherited listening socket, and does the once-only work of a start while they import the
DICOM stack (the development PKI and its banner, the SQLite index's migration or
PostgreSQL's version check, the blob container): each worker waits at its go pipe until the
supervisor writes the schema revision it prepared, which the worker checks with one query
instead of Alembic. The supervisor itself never imports the DICOM stack. A start thus costs
the workers' imports, not the supervisor's and then theirs: about 5.7 s before, 4.0 s after,
for two workers on a 2-core VM. If the preparation fails, the workers are killed unreleased;
if one cannot start (a configuration error, which it prints), the others are stopped and
``mimic serve`` exits 2. The supervisor serves
the ops endpoints for the whole server, replaces a worker that dies (with a back-off while
they keep dying young), forwards SIGHUP, and on SIGTERM closes its copy of the listening
socket, forwards the signal, waits for every worker to drain, and exits. Between those it
sleeps: its main loop blocks on the workers' pidfds and a signal wake-up pipe, and an idle
server's supervisor does not wake at all.

Why one inherited socket and not ``SO_REUSEPORT``: with a socket per worker the kernel
hashes each connection to one of them, including to a worker that is draining or busy; with
one socket the connection waits in one backlog for whichever worker accepts first, and a
second archive started on the same port by mistake still fails.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimic_server.certs import devpki
from mimic_server.config import Settings
from mimic_server.errors import ConfigurationError
from mimic_server.net import descriptors
from mimic_server.signals import STOP_NOW, StopRequests
from mimic_server.startup_checks import make_data_dir
from mimic_server.web.metrics import ServerMetrics
from mimic_server.web.ops import OpsState, build_app
from mimic_server.web.server import HttpServer
from mimic_server.workers.status import fetch_status, merge_status, sample_worker
from mimic_server.workers.table import NOT_ACCEPTING, AssociationTable

log = logging.getLogger(__name__)

#: The variable that carries ``mimic serve``'s command-line settings to its workers (the
#: ``MIMIC_*`` variables they inherit as they are).
OPTIONS_VARIABLE = "MIMIC_WORKER_OPTIONS"
#: A worker that dies younger than this (seconds) counts towards a crash loop.
CRASH_WINDOW = 30.0
#: Back-off before restarting a worker in a crash loop: doubles from the first to the last.
FIRST_BACKOFF, LONGEST_BACKOFF = 0.5, 60.0
#: Seconds a worker may take to say it is ready.
START_TIMEOUT = 120.0
#: Seconds a stop waits for a recovery of dead workers' audit journals begun before it.
RECOVERY_WAIT = 30.0
#: Seconds the drain waits for every worker to close its listening socket before /readyz
#: answers 503 anyway.
STOP_ACCEPT_WAIT = 5.0
#: Seconds during which a second trust change reported by a worker is not relayed again,
#: for a report that does not name its trust set (see ``link.trust_token``).
RELAY_INTERVAL = 1.0

#: Seconds between two looks at the workers where a process cannot be waited for by its
#: pidfd (``os.pidfd_open``: Linux 5.3); elsewhere the loop wakes only when a worker dies,
#: a signal arrives or a restart is due.
SUPERVISE_PERIOD = 0.2


@dataclass
class _Run:
    """One worker process: a slot's current incarnation."""

    process: subprocess.Popen[bytes]
    started: float
    pidfd: int | None = None  # readable once the process has ended
    ready: bool = False
    # A SIGHUP (forwarded or relayed) that came while it was still starting: sent when it
    # reports ready (it may have read its certificates before the change that caused it).
    hup_pending: bool = False
    server_not_after: float | None = None
    client_not_after: float | None = None  # the soonest trusted expiry; None: none trusted
    trusted_certificates: int | None = None  # how many it trusts; None: not reported yet
    aborted: int = 0  # associations it aborted when its drain time ran out
    stopped: bool = False  # it reported "stopped": its aborted count is known
    draining: bool = False  # it no longer accepts
    status_port: int | None = None  # its loopback /status/associations (console's "now")
    go_fd: int | None = None  # the go pipe's write end, until the worker is released
    reader: threading.Thread | None = None  # reads its status pipe until the worker ends
    start_overrun: bool = False  # killed for not reporting ready in START_TIMEOUT


@dataclass
class _Slot:
    index: int
    run: _Run | None = None
    young_deaths: int = 0
    restart_at: float | None = None
    runs: list[int] = field(default_factory=list)  # pids, for tests and logs


class Supervisor:
    """The parent process of ``count`` workers; see the module docstring."""

    def __init__(self, settings: Settings, options: dict[str, Any], count: int) -> None:
        self.settings = settings
        self.options = options
        self.count = count
        self.first_start: devpki.DevPki | None = None
        self.slots = [_Slot(i) for i in range(count)]
        self._listener: socket.socket | None = None
        self._directory = Path(tempfile.mkdtemp(prefix="mimic-workers-"))
        self._metrics_dir = self._directory / "metrics"
        self._metrics_dir.mkdir()
        self._table = AssociationTable(self._directory / "associations", count, create=True)
        self.metrics = ServerMetrics(self._metrics_dir, count, refresh=self._sample_workers,
                                     certificates=self._certificate_dates,
                                     trusted=self._trusted_certificates)
        self.metrics.ready.set_function(lambda: len(self._ready_runs()))
        self._engine: Any = None
        self._schema_revision: str | None = None
        self._store: Any = None
        self.ops: HttpServer | None = None
        # Plain flags, set by the signal handlers: an Event's set() takes a lock, which a
        # second signal's handler, run nested in the first, would wait for (signals.py).
        self._stopping = False
        #: SIGTERMs and SIGINTs so far: one repeated ends the drain at once.
        self._stop_requests = StopRequests()
        self._stopped_now = False
        self._hup_requested = False
        self._draining = threading.Event()
        self._lock = threading.Lock()
        #: The recovery of dead workers' audit journals under way, and whether another
        #: death asked for one meanwhile (:meth:`_recover_audit_aside`; under ``_lock``).
        self._recovering: threading.Thread | None = None
        self._recover_again = False
        self._last_relay = -RELAY_INTERVAL
        self._last_relayed_trust: str | None = None
        # Written by request_stop (a signal handler) and, as the signal wake-up fd, by the
        # C handler of any signal in whichever thread gets it: the main loop's poll wakes.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- start ------------------------------------------------------------------------------

    def start(self) -> None:
        """Prepare once, bind, start the workers, then the ops endpoints; on a failure
        nothing stays behind (workers, sockets, the temporary directory)."""
        try:
            self._start()
        except BaseException:
            self._abandon()
            raise

    def _start(self) -> None:
        s = self.settings
        make_data_dir(s.data_dir)
        self._recover_audit()  # a server killed whole: before any worker holds a journal
        descriptors.raise_soft_limit()  # the workers inherit it (each raises it again too)
        self._listener = self._bind()
        if s.ops_port:  # bound now: a taken port fails the start before any worker runs
            self.ops = HttpServer(build_app(self._ops_state()), s.ops_host, s.ops_port)
        # Started before the preparation, held at their go pipe until it is done: a worker
        # spends its first seconds importing the DICOM stack, which this overlaps.
        for slot in self.slots:
            self._spawn(slot, release=False)
        # The engine and the store alone (mimic_server.backends): the supervisor imports
        # neither the DICOM stack nor the archive, which would stay in its memory for good.
        from mimic_server.backends import open_index_engine, open_object_store
        from mimic_server.index import schema

        self._first_start()
        self._engine = open_index_engine(s)  # migrated (SQLite) or checked (PostgreSQL), once
        self._schema_revision = schema.current_revision(self._engine)
        # The blob container created once; no spare files: the supervisor never puts.
        self._store = open_object_store(s, puts=False)
        for slot in self.slots:
            assert slot.run is not None
            self._release(slot.run)
        self._await_ready(self.slots)
        if self.ops is not None:
            self.ops.start()
        host, port = self.address
        log.info("listening", extra={
            "address": f"{host}:{port}", "ae_title": s.ae_title, "tls": s.tls,
            "index": self._engine.dialect.name,
            "objects": s.blob_container if s.uses_blob_storage else str(s.objects_dir),
            "ops": f"{self.ops.address[0]}:{self.ops.address[1]}" if self.ops else "off",
            "workers": self.count,
        })

    def _first_start(self) -> None:
        """The development PKI, made here once (each worker then finds it)."""
        s = self.settings
        if not s.tls or s.keyvault_url or s.cert_dir is not None:
            return
        if not (s.certificate_dir / "server" / "server.pem").exists():
            pki = devpki.init(s.certificate_dir)
            if pki.created:
                self.first_start = pki

    def _bind(self) -> socket.socket:
        s = self.settings
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((s.host, s.port))
            listener.listen(s.listen_backlog)
        except OSError as exc:
            listener.close()
            raise ConfigurationError(
                f"cannot listen on {s.host}:{s.port}: {exc.strerror or exc}"
            ) from exc
        return listener

    @property
    def address(self) -> tuple[str, int]:
        assert self._listener is not None
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def _spawn(self, slot: _Slot, release: bool = True) -> None:
        """Start the slot's worker; it serves once released (at once by default: the index,
        the store and the PKI are prepared already, except during the start)."""
        assert self._listener is not None
        read_end, write_end = os.pipe()
        try:
            go_read, go_write = os.pipe()
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            raise
        env = dict(os.environ)
        env[OPTIONS_VARIABLE] = json.dumps(self.options)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self._metrics_dir)
        listen_fd = self._listener.fileno()
        # The worker starts with SIGHUP blocked (a signal mask survives fork and exec) and
        # unblocks it once its handler is set (``signals.SignalInbox.install``): a SIGHUP
        # sent to every process of the service while it imports (``systemctl kill -s
        # HUP``) waits for it instead of killing it. This thread's mask is put back at once;
        # a SIGHUP meanwhile waits for it or goes to another thread, and is not lost.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "mimic_server", "serve-worker",
                 "--slot", str(slot.index), "--slots", str(self.count),
                 "--listen-fd", str(listen_fd), "--status-fd", str(write_end),
                 "--go-fd", str(go_read),
                 "--table", str(self._table.path), "--supervisor-pid", str(os.getpid())],
                env=env, pass_fds=(listen_fd, write_end, go_read),
                # A group of its own: a terminal's Ctrl-C (SIGINT to the foreground group)
                # reaches the supervisor alone, which stops the workers in order; a worker
                # still importing had no handler yet and died with a traceback.
                process_group=0,
            )
        except BaseException:
            os.close(go_write)
            os.close(read_end)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            os.close(write_end)
            os.close(go_read)
        run = _Run(process, time.monotonic(), _pidfd(process.pid), go_fd=go_write)
        run.reader = threading.Thread(
            target=self._read_status, args=(slot, run, read_end), daemon=True,
            name=f"mimic-worker-{slot.index}-status",
        )
        try:
            run.reader.start()
        except RuntimeError as exc:
            # No thread to be had (memory, a pids limit: as likely as a failed Popen just
            # after the kernel killed a worker): the worker goes, unreleased, and this is a
            # start that failed (_replace tries again), not a fault that stops the server.
            process.kill()
            process.wait()
            _close_pidfd(run)
            os.close(read_end)
            raise OSError(errno.EAGAIN, f"no thread for the worker's status pipe: {exc}") \
                from exc
        if release:
            self._release(run)
        slot.run, slot.restart_at = run, None
        slot.runs.append(process.pid)
        log.info("worker started", extra={"worker": slot.index, "pid": process.pid})

    def _release(self, run: _Run) -> None:
        """Let the worker go on from its go pipe to serving: the schema revision it must
        find (the one prepared here), then the pipe's end."""
        assert run.go_fd is not None
        go = json.dumps({"schema_revision": self._schema_revision}).encode()
        try:
            with contextlib.suppress(BrokenPipeError):  # it died already: the loop sees it
                os.write(run.go_fd, go)
        finally:
            os.close(run.go_fd)
            run.go_fd = None

    def _read_status(self, slot: _Slot, run: _Run, read_end: int) -> None:
        """The worker's JSON lines: ready, the server certificate it serves, a trust set it
        found changed, that it stopped accepting, how many its drain aborted."""
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if "server_not_after" in message:
                        run.server_not_after = message["server_not_after"]
                    if "client_not_after" in message:
                        run.client_not_after = message["client_not_after"]
                    if "trusted_certificates" in message:
                        run.trusted_certificates = int(message["trusted_certificates"])
                    if message.get("event") == "status-port":
                        run.status_port = int(message["status_port"])
                    if message.get("event") == "ready":
                        self._ready(run)
                    if message.get("event") == "trust-changed":
                        self._relay_trust_change(run, message.get("trust"))
                    if message.get("event") == "draining":
                        run.draining = True
                    if message.get("event") == "stopped":
                        run.aborted = int(message.get("aborted_associations", 0))
                        run.stopped = True

    def _await_ready(self, slots: list[_Slot]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._stopping:
                # Told to stop (a container's stop signals this process alone): the drain
                # follows at once. Waiting here for a worker whose start hangs (a database
                # or store that does not answer) left those already up admitting new
                # associations, never told to drain, until the platform's SIGKILL.
                return
            pending = False
            for slot in slots:
                run = slot.run
                assert run is not None
                code = run.process.poll()
                if code is not None:
                    if self._stopping:  # told to stop meanwhile (a service manager's SIGTERM
                        continue  # reaches every process of its group): the drain follows
                    raise ConfigurationError(
                        f"worker {slot.index} could not start ({_describe_exit(code)})"
                    )
                pending = pending or not run.ready
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ConfigurationError(f"the workers did not start in {START_TIMEOUT:g} s")
            time.sleep(0.05)

    def _abandon(self) -> None:
        """A failed start: the workers already running go at once."""
        for slot in self.slots:
            if slot.run is not None and slot.run.process.poll() is None:
                slot.run.process.kill()
                slot.run.process.wait()
        if self.ops is not None:
            self.ops.stop()
            self.ops = None
        self._close()

    # -- ops ---------------------------------------------------------------------------------

    def _ops_state(self) -> OpsState:
        return OpsState(
            alive=self.alive,
            draining=self._draining.is_set,
            checks={
                "workers": self._workers_ready,
                "index": self._index_answers,
                "object_store": self._store_answers,
                "certificate": self._certificate_valid,
            },
            metrics=self.metrics,
            status=self._status,
        )

    def _index_answers(self) -> str:
        # Imported here: the ops endpoints are built before the workers start, and the
        # supervisor imports the index only once they have (``_start``).
        from mimic_server.backends import index_answers

        return index_answers(self._engine)

    def _store_answers(self) -> str:
        from mimic_server.backends import store_answers

        return store_answers(self._store)

    def _sample_workers(self) -> None:
        """Before a scrape: every ready worker writes its sampled metrics."""
        for run in self._ready_runs():
            sample_worker(run.status_port)

    def _certificate_dates(self) -> dict[str, float]:
        """The soonest server and client expiry among the ready workers (the metric a single
        process exports from its bundle); a role none of them has is left out."""
        runs = self._ready_runs()
        dates: dict[str, float] = {}
        for role, reported in (("server", [r.server_not_after for r in runs]),
                               ("client", [r.client_not_after for r in runs])):
            known = [d for d in reported if d is not None]
            if known:
                dates[role] = min(known)
        return dates

    def _trusted_certificates(self) -> int | None:
        """The least count of trusted certificates a ready worker reported (None: none
        has): a replacement still starting, which trusts nothing yet, is not counted."""
        counts = [r.trusted_certificates for r in self._ready_runs()
                  if r.trusted_certificates is not None]
        return min(counts) if counts else None

    def _status(self) -> dict[str, object]:
        """Every ready worker's open associations and the per-minute counts summed."""
        return merge_status([
            (slot.index, fetch_status(slot.run.status_port))
            for slot in self.slots
            if slot.run is not None and slot.run.ready and slot.run.status_port is not None
        ])

    def _ready_runs(self) -> list[_Run]:
        runs = [slot.run for slot in self.slots if slot.run is not None]
        return [r for r in runs if r.ready and r.process.poll() is None]

    def alive(self) -> bool:
        """Healthy while some worker accepts; a dead one is being replaced meanwhile."""
        return bool(self._ready_runs())

    def _workers_ready(self) -> str:
        """Ready while some worker accepts. The workers share one listening socket, so a
        new association waits only for one that accepts: a replica with one worker dead
        or being replaced still serves, at less capacity (``mimic_workers_ready`` says how
        much). Asking for all of them took the whole replica out of the ingress for as
        long as one worker's replacement took, a crash loop's back-off of up to 60 s
        included, while the others served."""
        ready = len(self._ready_runs())
        if ready == 0:
            raise ConfigurationError(f"0 of {self.count} workers ready")
        return f"{ready} of {self.count} workers ready"

    def _certificate_valid(self) -> str:
        from datetime import UTC, datetime

        if not self.settings.tls:
            return "TLS off"
        dates = [r.server_not_after for r in self._ready_runs() if r.server_not_after]
        if not dates:
            raise ConfigurationError("no server certificate loaded")
        not_after = datetime.fromtimestamp(min(dates), UTC)
        if not_after <= datetime.now(UTC):
            raise ConfigurationError(f"server certificate expired {not_after.isoformat()}")
        return f"server certificate valid until {not_after.isoformat()}"

    # -- running -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """SIGTERM/SIGINT (the handler): the main loop wakes and drains; a second one, a
        second or more after the first (``signals.REPEAT_AFTER``), ends the drain at once
        (:meth:`_forward_stop_now`). Takes no lock."""
        self._stop_requests.note()
        self._stopping = True
        self._wake()

    def request_hup(self) -> None:
        """SIGHUP (the handler): the main loop wakes and forwards it (:meth:`hup`). Takes no
        lock; a SIGHUP during the start is forwarded once the workers are up."""
        self._hup_requested = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: it wakes anyway; closed: it is over
            os.write(self._wake_w, b"\0")

    def hup(self) -> None:
        """SIGHUP: every worker reads its certificates and policy file again."""
        self._send_hup([slot.run for slot in self.slots if slot.run is not None])

    def _send_hup(self, runs: list[_Run]) -> None:
        """SIGHUP to each of ``runs`` that is ready. One still starting gets it when it
        reports ready (:meth:`_ready`), not now: SIGHUP would end it before its handler is
        set; nor never: it read its certificates early in its start, perhaps before the
        change this signal is about, and would serve what was revoked until its next poll."""
        ready = []
        with self._lock:  # against _ready: a signal is either sent here or left pending
            for run in runs:
                if run.ready:
                    ready.append(run)
                else:
                    run.hup_pending = True
        for run in ready:
            if run.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    run.process.send_signal(signal.SIGHUP)

    def _ready(self, run: _Run) -> None:
        """The worker reported ready (its SIGHUP handler is set by then: cli.py): a SIGHUP
        held back while it started is sent now."""
        with self._lock:
            run.ready = True
            pending, run.hup_pending = run.hup_pending, False
        if pending:
            with contextlib.suppress(ProcessLookupError):
                run.process.send_signal(signal.SIGHUP)

    def _relay_trust_change(self, source: _Run, trust: str | None = None) -> None:
        """One worker's watcher saw the certificates change: the others look at once (as on
        SIGHUP) instead of at their next poll, so that a revocation takes effect in every
        worker together. Not when the set reported is the one last relayed (the others
        finding it on the SIGHUP would otherwise echo back); a report without its set is
        relayed at most once per :data:`RELAY_INTERVAL`."""
        now = time.monotonic()
        with self._lock:
            if trust is not None:
                if trust == self._last_relayed_trust:
                    return
                self._last_relayed_trust = trust
            elif now - self._last_relay < RELAY_INTERVAL:
                return
            self._last_relay = now
        self._send_hup([slot.run for slot in self.slots
                        if slot.run is not None and slot.run is not source])

    def run(self) -> int:
        """Supervise until told to stop, then drain the workers. Called in the main thread
        (the signal wake-up fd is set there): it blocks until a worker ends (its pidfd), a
        signal arrives or a restart is due, and otherwise does not wake. Returns how many
        serving workers did not stop cleanly during the drain (:meth:`_drain`)."""
        previous = _wake_on_signals(self._wake_w)
        try:
            while not self._stopping:
                self._wait()  # a request made during the start left its byte: no wait
                if self._stopping:
                    break
                self._forward_hup()
                now = time.monotonic()
                for slot in self.slots:
                    run = slot.run
                    if run is not None and run.process.poll() is not None:
                        self._died(slot, run, now)
                    elif run is not None:
                        self._check_start(slot, run, now)
                    if (slot.run is None and slot.restart_at is not None
                            and now >= slot.restart_at):
                        self._replace(slot, now)
        except BaseException as exc:
            # A fault of the supervisor's own (raised on, with its traceback): the workers
            # still drain; without, their parent's death kills them and their associations.
            log.error("the supervisor failed; draining the workers",
                      extra={"error": type(exc).__name__})
            self._drain()
            raise
        finally:
            if previous is not None:
                signal.set_wakeup_fd(previous)
        return self._drain()

    def _replace(self, slot: _Slot, now: float) -> None:
        """Start the replacement of a dead worker. Where it cannot be started (no descriptor
        or memory left: as likely as not just after the kernel killed a worker for memory),
        that is logged and tried again with the crash loop's back-off; the other workers go
        on serving."""
        try:
            self._spawn(slot)
        except OSError as exc:
            slot.young_deaths += 1
            delay = min(LONGEST_BACKOFF, FIRST_BACKOFF * 2 ** (slot.young_deaths - 1))
            slot.restart_at = now + delay
            log.error("cannot start a worker; trying again", extra={
                "worker": slot.index, "error": type(exc).__name__, "errno": exc.errno,
                "restart_in_seconds": delay,
            })

    def _check_start(self, slot: _Slot, run: _Run, now: float) -> None:
        """A replacement that has not reported ready in ``START_TIMEOUT`` (hung in its
        start: a store or database that never answers) is killed, logged at ERROR; its death
        is then a young one (``_died``), restarted with the crash loop's back-off. Left
        alone it would hold its slot, unserved, with ``/readyz`` 503, for good. Decided under
        the lock :meth:`_ready` takes: a worker reporting ready at that moment is kept."""
        with self._lock:
            if run.ready or run.start_overrun or now - run.started < START_TIMEOUT:
                return
            run.start_overrun = True
        log.error("worker did not start; killing it", extra={
            "worker": slot.index, "pid": run.process.pid, "start_timeout_seconds": START_TIMEOUT,
        })
        with contextlib.suppress(ProcessLookupError):
            run.process.kill()

    def _wait(self) -> None:
        """Until a worker ends, the wake-up is written, the next restart is due or a
        replacement's start runs out of time."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        timeout: float | None = None
        for slot in self.slots:
            run = slot.run
            if run is not None:
                if run.pidfd is None:
                    timeout = SUPERVISE_PERIOD
                else:
                    poller.register(run.pidfd, select.POLLIN)
                if not run.ready and not run.start_overrun:
                    due = max(0.0, run.started + START_TIMEOUT - time.monotonic())
                    timeout = due if timeout is None else min(timeout, due)
            elif slot.restart_at is not None:
                due = max(0.0, slot.restart_at - time.monotonic())
                timeout = due if timeout is None else min(timeout, due)
        poller.poll(None if timeout is None else timeout * 1000 + 1)
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 4096)

    def _died(self, slot: _Slot, run: _Run, now: float) -> None:
        code = run.process.returncode
        _close_pidfd(run)
        self.metrics.worker_ended(run.process.pid)  # its files: web/metrics.py
        # Its open associations ended with it, never counted released or aborted.
        lost = self._table.published(slot.index)
        self.metrics.associations_lost.inc(lost)
        self._table.publish(slot.index, 0)
        self._table.hold(slot.index, NOT_ACCEPTING)  # no other worker waits for a dead one
        self.metrics.restarts.inc()
        # One killed for a hung start died young too: its replacement waits its back-off.
        young = run.start_overrun or now - run.started < CRASH_WINDOW
        slot.young_deaths = slot.young_deaths + 1 if young else 0
        delay = (0.0 if slot.young_deaths == 0
                 else min(LONGEST_BACKOFF, FIRST_BACKOFF * 2 ** (slot.young_deaths - 1)))
        slot.run, slot.restart_at = None, now + delay
        log.error("worker died; replacing it", extra={
            "worker": slot.index, "pid": run.process.pid, **_exit_fields(code),
            "open_associations": lost, "restart_in_seconds": delay,
            "young_deaths": slot.young_deaths,
        })
        self._recover_audit_aside()

    def _recover_audit_aside(self) -> None:
        """:meth:`_recover_audit` in a thread of its own, not on the main loop, which it could
        hold for seconds (the audit repository's sender: its certificate read, from Key
        Vault perhaps, and its queue's close, up to 2 s) while the replacement waited, and a
        SIGHUP (a revocation) or SIGTERM with it. One at a time: a death during a recovery
        has it run once more when it ends. A recovery is safe beside another (each journal
        is taken under its lock) and cut anywhere (the next writes only what is missing)."""
        with self._lock:
            if self._recovering is not None:
                self._recover_again = True
                return
            thread = threading.Thread(target=self._recoveries, name="audit-recovery",
                                      daemon=True)
            self._recovering = thread
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (a process or memory limit): here, then
            with self._lock:
                self._recovering = None
            self._recover_audit()

    def _recoveries(self) -> None:
        while True:
            self._recover_audit()
            with self._lock:
                if not self._recover_again:
                    self._recovering = None
                    return
                self._recover_again = False

    def _recover_audit(self) -> None:
        """Where the trail is the file (a SQLite index), write the DICOM Instances
        Transferred of the associations a dead worker left open, from their journals
        (``security/audit_journal.py``): those of live workers are locked and left alone.
        Imported here: a supervisor none of whose workers died never loads the audit
        messages. A failure is logged and does not stop the supervision: the journals stay
        for the next recovery.

        The records also go to the audit repository (syslog/TLS) when one is configured, as
        the workers' do, through a sender made at this recovery's first record with the
        workers' client certificate (read then), closed after up to 2 s for its queue, as
        at a stop. One that cannot be made (its certificate unreadable) leaves the records
        to the file, said at ERROR: the file is the trail, and its records are not held
        back for it."""
        s = self.settings
        if s.audit_in_index:  # the table trail writes each in its commit
            return
        directory = s.audit_journal_path
        try:
            if not any(directory.iterdir()):
                return
        except OSError:  # none yet
            return
        try:
            from mimic_server.security.audit import AuditLog
            from mimic_server.security.audit_journal import recover
            from mimic_server.security.audit_records import Archive

            sinks: list[Any] = [_RecoveryRepository(s)] if s.audit_syslog_host else []
            trail = AuditLog(s.audit_path, sinks=sinks,
                             archive=Archive(s.ae_title, host=socket.gethostname()))
            try:
                recover(directory, trail)
            finally:
                trail.close()
        except Exception as exc:
            log.error("audit journals not recovered", extra={"error": type(exc).__name__})

    def _drain(self) -> int:
        """Stop accepting here, let every worker drain (MIMIC_DRAIN_SECONDS), then go. Returns
        how many serving workers did not stop cleanly: died (killed, crashed) or were killed
        here for overrunning, or ended without saying how many associations they aborted.
        Each is logged at ERROR: its open associations were lost, and the total in the
        ``stopped`` line lacks them."""
        if self._listener is not None:
            self._listener.close()  # the workers' copies close as each stops accepting
            self._listener = None
        slots = [(slot.index, slot.run) for slot in self.slots if slot.run is not None]
        runs = [run for _, run in slots]
        # Only these served, and drain. One not yet ready (a replacement, or a first start
        # cut short by the stop) goes at once: SIGTERM ended one still importing, but one
        # past its handler finished its start first (a database or store that does not
        # answer: for as long as that took, killed at drain + 15 s), and meanwhile accepted
        # connections after /readyz said 503, or held its copy of the listening socket
        # with connections waiting in it for nobody. Decided under the lock _ready takes.
        with self._lock:
            serving = {id(run) for run in runs if run.ready}
        for run in runs:
            with contextlib.suppress(ProcessLookupError):
                run.process.send_signal(signal.SIGTERM if id(run) in serving
                                        else signal.SIGKILL)
        # /readyz says 503 once no worker accepts any more (or after STOP_ACCEPT_WAIT): from
        # then on a new connection is refused, never admitted by a worker not yet told.
        deadline = time.monotonic() + STOP_ACCEPT_WAIT
        while time.monotonic() < deadline and not all(
            r.draining or r.process.poll() is not None for r in runs
        ):
            self._forward_hup()
            self._forward_stop_now([run for run in runs if id(run) in serving])
            time.sleep(0.02)
        self._draining.set()
        deadline = time.monotonic() + self.settings.drain_seconds + 15.0
        failed = 0
        for index, run in slots:
            killed = False
            code = self._await_end(run, max(deadline, time.monotonic() + 0.1),
                                   [r for r in runs if id(r) in serving])
            if code is None:
                log.error("worker did not stop; killing it", extra={
                    "worker": index, "pid": run.process.pid,
                    "open_associations": self._table.published(index),
                })
                run.process.kill()
                code = run.process.wait()
                killed = True
            if run.reader is not None:  # its last lines ("stopped") read to the pipe's end
                run.reader.join(1.0)
            if id(run) not in serving or (code == 0 and run.stopped):
                continue
            failed += 1
            if not killed:  # one killed here was logged above
                log.error("worker died during the drain", extra={
                    "worker": index, "pid": run.process.pid, **_exit_fields(code),
                    "stop_reported": run.stopped,
                    "open_associations": self._table.published(index),
                })
        recovering = self._recovering  # of a death before the stop
        if recovering is not None:
            recovering.join(RECOVERY_WAIT)  # past it, the next start writes what is left
        if failed:
            # One died or was killed here with associations open: their records now, once
            # every worker has ended (its journals' locks with it), not at some later start
            # on this data directory, which may never come.
            self._recover_audit()
        if self.ops is not None:
            self.ops.stop()  # after the drain: probes see 503 from /readyz meanwhile
            self.ops = None
        self._close()
        unreported = sum(1 for run in runs if id(run) in serving and not run.stopped)
        log.info("stopped", extra={
            "workers": len(runs), "aborted_associations": sum(r.aborted for r in runs),
            # False: a worker ended without its count (its open associations were lost
            # too, uncounted): the total is a lower bound.
            "aborted_associations_complete": unreported == 0,
            "workers_failed": failed,
        })
        return failed

    def _forward_hup(self) -> None:
        """A SIGHUP that came since the last look is sent to the workers now."""
        if self._hup_requested:
            self._hup_requested = False  # cleared first: a later one is not lost
            self.hup()

    def _forward_stop_now(self, serving: list[_Run]) -> None:
        """The operator repeated the stop (a second SIGTERM or SIGINT, a second or more
        after the first) while the workers drain: each worker that served is told to abort
        what is still open and stop now (``signals.STOP_NOW``), once. A worker that had not
        begun its drain yet skips it."""
        if not self._stop_requests.repeated or self._stopped_now:
            return
        self._stopped_now = True
        # Not to one that has stopped already: it has nothing open, and is about to exit.
        alive = [run for run in serving if not run.stopped and run.process.poll() is None]
        if alive:  # else every drain had ended: nothing was cut short
            log.warning("drain cut short", extra={"workers": len(alive)})
        for run in alive:
            with contextlib.suppress(ProcessLookupError):
                run.process.send_signal(STOP_NOW)

    def _await_end(self, run: _Run, deadline: float, serving: list[_Run]) -> int | None:
        """``run``'s exit code once it ends, None if it still runs at ``deadline``
        (monotonic). A SIGHUP meanwhile is forwarded (:meth:`_forward_hup`): workers drain
        for up to ``MIMIC_DRAIN_SECONDS``, and a certificate revoked then (the operator's or
        the Key Vault watcher's SIGHUP) must have its associations aborted at once, not
        left storing until the drain ends; so is a second stop (:meth:`_forward_stop_now`,
        to every worker in ``serving``). Wakes on the worker's end (its pidfd) or the
        wake-up pipe the signal handlers write, not on a timer."""
        while True:
            self._forward_hup()
            self._forward_stop_now(serving)
            code = run.process.poll()
            if code is not None:
                return code
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            if run.pidfd is not None:
                poller.register(run.pidfd, select.POLLIN)
            else:
                left = min(left, SUPERVISE_PERIOD)
            poller.poll(left * 1000 + 1)
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)

    def _close(self) -> None:
        for slot in self.slots:
            if slot.run is not None:
                _close_pidfd(slot.run)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._store is not None:  # its directory and lock file in .incoming go with it
            from mimic_server.backends import close_object_store

            close_object_store(self._store)
            self._store = None
        with contextlib.suppress(ValueError, BufferError):
            self._table.close()
        shutil.rmtree(self._directory, ignore_errors=True)


class _RecoveryRepository:
    """The audit repository's sender for one recovery's records (see
    :meth:`Supervisor._recover_audit`), made at its first record: a recovery that writes
    nothing (the journals all live workers', or kept aside as unreadable) connects nowhere
    and reads no certificate. ``resources`` is imported only then: it loads the index's and
    the policy's modules (a second)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sink: Any = None
        self._unusable = False

    def write(self, entry: Any, details: Any) -> None:
        if self._sink is None and not self._unusable:
            try:
                from mimic_server.resources import audit_repository

                self._sink = audit_repository(self._settings)
            except Exception as exc:  # the file still gets them
                self._unusable = True
                log.error("audit repository unusable for the records written from "
                          "journals; they go to the audit file only",
                          extra={"error": type(exc).__name__})
        if self._sink is not None:
            self._sink.write(entry, details)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None


def _pidfd(pid: int) -> int | None:
    """A descriptor readable once ``pid`` has ended, or None where the kernel has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _close_pidfd(run: _Run) -> None:
    if run.pidfd is not None:
        with contextlib.suppress(OSError):
            os.close(run.pidfd)
        run.pidfd = None
    if run.go_fd is not None:  # never released: its worker reads the end of the pipe
        with contextlib.suppress(OSError):
            os.close(run.go_fd)
        run.go_fd = None


def _wake_on_signals(fd: int) -> int | None:
    """Have every signal write ``fd`` (whichever thread the kernel hands it to, the main
    thread's poll then returns and runs the Python handler); the previous fd, or None when
    this is not the main thread (the loop then still wakes by :meth:`request_stop`'s
    write, once the handler runs)."""
    try:
        return signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    except ValueError:
        return None


def _exit_fields(code: int) -> dict[str, Any]:
    if code < 0:
        with contextlib.suppress(ValueError):
            return {"signal": signal.Signals(-code).name}
        return {"signal": -code}
    return {"exit_code": code}


def _describe_exit(code: int) -> str:
    fields = _exit_fields(code)
    return f"signal {fields['signal']}" if "signal" in fields else f"exit code {code}"
