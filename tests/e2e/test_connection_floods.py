"""Unauthenticated connections cannot starve authenticated ones, flood the audit trail or
take the listener down.

A flood of idle TCP connections that reopen as soon as they are dropped, a burst of connects,
thousands of probes, an audit trail on a full disk, a listener that dies: each through the
network against a real server (a ``mimic serve`` process, or an in-process ``Archive`` where
a fault has to be injected), with pynetdicom as the modality that must still be served.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mimic_server.app import Archive
from mimic_server.cli import EXIT_LISTENER_DIED, main
from mimic_server.config import Settings
from mimic_server.net.server import MimicAssociationServer
from tests.support import HOST, MimicProcess, associate, client_context, free_port, wait_for

EVENTUALLY = 15.0


def echo_ok(port: int, ctx: ssl.SSLContext) -> bool:
    assoc = associate(port, ctx)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0x0000


class IdleFlood:
    """``count`` idle TCP connections (no ClientHello), each reopened as soon as the server
    drops it (handshake deadline or eviction): the attack of issue 10."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.reopened = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._hold, daemon=True) for _ in range(count)]

    def __enter__(self) -> IdleFlood:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _hold(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection((HOST, self.port), timeout=10) as sock:
                    sock.settimeout(0.5)
                    while not self._stop.is_set():
                        try:
                            if not sock.recv(1):
                                break  # dropped by the server: open another one
                        except TimeoutError:
                            continue
            except OSError:
                pass
            with self._lock:
                self.reopened += 1


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MimicProcess]:
    """The finding's configuration: 4 associations, 16 pending handshakes, 2 s deadline."""
    process = MimicProcess(
        tmp_path_factory.mktemp("small") / "data", max_associations="4",
        max_pending_handshakes="16", handshake_timeout="2",
    ).start()
    yield process
    assert process.stop() == 0, process.log()


def test_idle_flood_at_the_cap_does_not_lock_modalities_out(small: MimicProcess) -> None:
    """16 idle connections (the pending-handshake cap), reopened whenever dropped, while a
    modality sends 11 C-ECHOs, each on a new TLS association: every one succeeds (before:
    10 of 11 were refused "too many connections waiting for their handshake")."""
    ctx = client_context(small.client_cert, small.client_key, small.ca_cert)
    with IdleFlood(small.port, 16) as flood:
        assert wait_for(lambda: flood.reopened >= 16, timeout=EVENTUALLY), "flood never cycled"
        results = [echo_ok(small.port, ctx) for _ in range(11)]
    assert all(results), f"{results.count(False)} of 11 C-ECHOs failed under the flood"
    # And the association capacity is whole afterwards: 4 at once.
    held = [associate(small.port, ctx) for _ in range(4)]
    try:
        assert all(a.is_established for a in held)
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()


def test_listen_backlog_takes_a_burst(small: MimicProcess) -> None:
    """The listening socket's backlog (``ss`` shows it as Send-Q) is the configured 512, not
    socketserver's 5 that dropped the SYNs of a burst; and a burst of 300 connects made at
    once all connect."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{small.port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(out[2]) >= 512, f"listen backlog {out[2]}"
    burst = []
    try:
        for _ in range(300):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((HOST, small.port))
            burst.append(sock)
        for sock in burst:
            sock.setblocking(True)
            sock.settimeout(10)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        ctx = client_context(small.client_cert, small.client_key, small.ca_cert)
        assert echo_ok(small.port, ctx)
    finally:
        for sock in burst:
            sock.close()


# -- the audit trail ------------------------------------------------------------------------


def handshake_failures(server: MimicProcess) -> int:
    """Connections refused so far, from the server's metrics."""
    status, body = server.ops("/metrics")
    assert status == 200
    return sum(
        int(float(line.rsplit(" ", 1)[1])) for line in body.decode().splitlines()
        if line.startswith("mimic_tls_handshake_failures_total{")
    )


def test_refused_connections_are_audited_and_logged_as_counts(tmp_path: Path) -> None:
    """60 connections refused for two reasons: the audit trail gets one Security Alert per
    source and reason with the count (before: one record each), written at stop; and the
    log gets the first refusal of each reason at once and the rest as one line with the
    count (before: 60 WARNING lines)."""
    server = MimicProcess(tmp_path / "data", audit_refusal_interval="3600").start()
    try:
        anonymous = client_context(None, None, server.ca_cert)
        for _ in range(40):
            raw = socket.create_connection((HOST, server.port), timeout=10)
            with (
                contextlib.suppress(ssl.SSLError, OSError),
                anonymous.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                tls.recv(1)
            raw.close()
        for _ in range(20):
            socket.create_connection((HOST, server.port), timeout=10).close()
        assert wait_for(lambda: handshake_failures(server) >= 60, timeout=EVENTUALLY)
        # Each worker process (MIMIC_WORKERS) counts the refusals it saw: the bounds below
        # are per process, the counts add up.
        processes = max(1, sum(1 for e in server.log_entries()
                               if e.get("message") == "worker started"))
        prompt = [e for e in server.log_entries() if e.get("message") == "connection refused"]
        assert 1 <= len(prompt) <= 2 * processes, prompt  # the first of each reason, at once
        assert all(e["count"] == 1 and e["peer"].startswith(f"{HOST}:") for e in prompt)
    finally:
        assert server.stop() == 0, server.log()
    lines = [e for e in server.log_entries() if e.get("message") == "connection refused"]
    assert len(lines) <= 4 * processes, f"{len(lines)} log lines for 60 refusals"
    assert sum(int(e["count"]) for e in lines) == 60
    assert all(e["level"] == "WARNING" for e in lines)
    records = [
        json.loads(line) for line in (server.data_dir / "audit.jsonl").read_text().splitlines()
    ]
    alerts = [r for r in records if r["EventID"]["code"] == "110113"]
    keys = Counter((r["peer"], r["reason"]) for r in alerts)
    assert max(keys.values()) <= processes, "more than one record per source and reason"
    assert 1 <= len(alerts) <= 3 * processes, alerts
    assert sum(int(r.get("count", 1)) for r in alerts) == 60
    assert all(r["peer"] == HOST for r in alerts)
    no_certificate = [r for r in alerts if "CERTIFICATE" in r["reason"]]
    assert no_certificate and sum(int(r["count"]) for r in no_certificate) == 40, alerts


# -- the listener survives, or the process ends -----------------------------------------------


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[Archive]:
    """An Archive in this process, so that its audit sink can be made to fail."""
    archive = Archive(Settings(
        data_dir=tmp_path / "data", host=HOST, port=free_port(), ops_port=0, max_associations=1,
        max_pending_handshakes=2, audit_refusal_interval=0.2, handshake_timeout=5,
    ))
    archive.start()
    yield archive
    archive.stop(0)


def test_audit_sink_on_a_full_disk_does_not_stop_the_listener(
    in_process: Archive, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Writing the audit record of refused connections fails with ENOSPC: the failure is
    logged at ERROR and the server goes on answering C-ECHO (before: the OSError escaped the
    accept loop and ended it for good)."""
    calls: list[Any] = []

    def disk_full(*args: Any, **kwargs: Any) -> None:
        calls.append(kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # The file sink fails as on a full disk (the audit log itself never raises: it counts).
    monkeypatch.setattr(in_process.audit.sinks[0], "write", disk_full)
    port = in_process.address[1]
    certs = in_process.settings.certificate_dir
    ctx = client_context(
        certs / "clients/modality1/client.pem", certs / "clients/modality1/client.key",
        certs / "ca/ca.pem",
    )
    caplog.set_level(logging.ERROR)
    idle = [socket.create_connection((HOST, port), timeout=10) for _ in range(6)]
    try:
        assert wait_for(lambda: bool(calls), timeout=EVENTUALLY), "no refusal was audited"
        for _ in range(3):
            assert echo_ok(port, ctx), "the listener stopped after the audit write failed"
    finally:
        for sock in idle:
            sock.close()
    assert in_process.listener_alive()
    assert any(r.levelno >= logging.ERROR for r in caplog.records)
    assert in_process.audit.failures >= len(calls) > 0
    monkeypatch.undo()  # stop() writes its own record


def test_mimic_serve_exits_non_zero_when_the_listener_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The accept loop ends by an exception (here from the hook it calls on every turn,
    which a connection makes it take: an idle loop does not turn): ``mimic serve`` notices
    and exits 3 instead of running on without listening. (A SIGTERM after a while ends a
    serve that never notices, with exit 0, so that this test fails rather than hangs.) One
    process (``--workers 1``): the hook is patched in this one; a worker process that exits
    so is replaced by its supervisor (tests/e2e/test_workers.py)."""

    def dies(self: MimicAssociationServer) -> None:
        raise RuntimeError("the accept loop broke")

    monkeypatch.setattr(MimicAssociationServer, "service_actions", dies)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    guard = threading.Timer(20, lambda: os.kill(os.getpid(), signal.SIGTERM))
    guard.start()
    port = free_port()
    poked = threading.Event()

    def poke() -> None:  # one connection once it listens: the loop turns
        while not poked.wait(0.2):
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1):
                poked.set()

    threading.Thread(target=poke, daemon=True).start()
    try:
        result = CliRunner().invoke(main, [
            "serve", "--data-dir", str(tmp_path / "data"), "--host", HOST,
            "--port", str(port), "--workers", "1", "--ops-port", "0",  # not the shared 8080
        ])
    finally:
        poked.set()
        guard.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert result.exit_code == EXIT_LISTENER_DIED, (result.exit_code, result.output)


class _Exhausted:
    """The listening socket, its ``accept()`` failing with EMFILE ``times`` times first."""

    def __init__(self, sock: socket.socket, times: int) -> None:
        self.sock = sock
        self.times = times

    def accept(self) -> tuple[socket.socket, Any]:
        if self.times:
            self.times -= 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return self.sock.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_out_of_descriptors_evicts_pending_handshakes(
    in_process: Archive, caplog: pytest.LogCaptureFixture
) -> None:
    """``accept()`` fails with EMFILE three times while two idle connections wait for their
    handshake: they are evicted to free descriptors, one WARNING says so, and the modality
    behind them is served (before: nothing was evicted and the accept loop retried at once)."""
    server = in_process.server
    assert server is not None
    port = in_process.address[1]
    certs = in_process.settings.certificate_dir
    ctx = client_context(
        certs / "clients/modality1/client.pem", certs / "clients/modality1/client.key",
        certs / "ca/ca.pem",
    )
    caplog.set_level(logging.WARNING)
    idle = [socket.create_connection((HOST, port), timeout=10) for _ in range(2)]
    try:
        assert wait_for(lambda: len(server.handshakes) == 2, timeout=EVENTUALLY)
        server.socket = _Exhausted(server.socket, 3)  # type: ignore[assignment]
        assert echo_ok(port, ctx)
        for sock in idle:
            assert sock.recv(1) == b"", "an idle pending handshake was not evicted"
    finally:
        server.socket = getattr(server.socket, "sock", server.socket)
        for sock in idle:
            sock.close()
    lines = [r for r in caplog.records if r.getMessage().startswith("out of file descriptors")]
    assert len(lines) == 1, lines
