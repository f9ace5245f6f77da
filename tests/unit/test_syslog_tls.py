"""Audit messages to an audit repository over syslog/TLS: framing, client certificate, a
repository that is down never blocks the sender and gets the queue when it comes back."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from mimic_server.security import audit_message as am
from mimic_server.security.syslog_tls import SyslogTlsSink, frame
from tests.support import HOST, free_port, wait_for
from tests.syslog_double import SyslogTlsReceiver

XML = am.application_activity(am.Participant("MIMIC", False, (am.APPLICATION,)), True,
                              "MIMIC").to_xml()


def test_frame_is_rfc5424_with_octet_count() -> None:
    data = frame(XML, hostname="archive-1", procid="42")
    length, _, message = data.partition(b" ")
    assert int(length) == len(message)
    assert re.match(rb"<85>1 \d{4}-\d\d-\d\dT[\d:.]+Z archive-1 MIMIC 42 IHE\+RFC-3881 - "
                    rb"\xef\xbb\xbf<AuditMessage", message)
    am.validate(message.split(b"\xef\xbb\xbf", 1)[1])
    assert frame(XML, severity=4).split(b" ", 2)[1].startswith(b"<84>")


def test_messages_reach_the_repository_with_the_client_certificate(tmp_path: Path) -> None:
    receiver = SyslogTlsReceiver(tmp_path).start()
    sink = SyslogTlsSink(HOST, receiver.port, receiver.client_context(),
                         server_name="localhost").start()
    try:
        for _ in range(5):
            sink.send(XML)
        assert wait_for(lambda: len(receiver.messages) == 5)
        assert receiver.peers == ["mimic-audit-client"]
        assert all(b"IHE+RFC-3881" in m for m in receiver.messages)
    finally:
        sink.close()
        receiver.stop()


def test_repository_down_never_blocks_and_catches_up(tmp_path: Path) -> None:
    receiver = SyslogTlsReceiver(tmp_path)  # not started yet
    sink = SyslogTlsSink(HOST, receiver.port, receiver.client_context(),
                         server_name="localhost", queue_size=50, max_backoff=0.5).start()
    try:
        for _ in range(80):  # a blocking send would hang here (pytest-timeout)
            sink.send(XML)
        assert sink.dropped == 30 and sink.pending() == 50
        receiver.start()
        assert wait_for(lambda: len(receiver.messages) == 50, 15)
        assert sink.pending() == 0
    finally:
        sink.close()
        receiver.stop()


def test_the_queue_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    """Repository down: large messages are dropped, oldest first, once the queue holds more
    than its bytes, however few they are; the newest is kept even alone over the bound."""
    receiver = SyslogTlsReceiver(tmp_path)  # not started: the repository is down
    sink = SyslogTlsSink(HOST, receiver.port, receiver.client_context(),
                         server_name="localhost", queue_size=10_000,
                         queue_bytes=100_000).start()
    try:
        for n in range(10):
            sink.send(f"<AuditMessage n='{n}'>{'A' * 30_000}</AuditMessage>")
        assert sink.pending() == 3 and sink.dropped == 7
        assert 90_000 < sink.queued_bytes <= 100_000
        sink.send("A" * 150_000)
        assert sink.pending() == 1 and sink.dropped == 10
        assert sink.queued_bytes > 150_000
    finally:
        sink.close(0)
        receiver.stop()


def test_drops_are_logged_at_once_then_at_most_once_per_interval(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Repository down, queue full: the first drop is a WARNING at once (not only at the
    stop), later ones wait for the interval; the attempts to reach the repository follow
    their backoff, not every new message (each was a connection and a WARNING)."""
    receiver = SyslogTlsReceiver(tmp_path)  # only its certificates: nothing listens

    def logged(message: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == message]

    with caplog.at_level(logging.WARNING, logger="mimic_server.security.syslog_tls"):
        sink = SyslogTlsSink(HOST, free_port(), receiver.client_context(),
                             server_name="localhost", queue_size=5, first_backoff=60).start()
        try:
            sink.send(XML)
            assert wait_for(lambda: logged("audit repository unreachable; retrying"))
            for _ in range(49):
                sink.send(XML)
            assert sink.dropped == 45 and sink.pending() == 5
            drops = logged("audit repository: queue full, oldest messages dropped")
            assert [(r.levelname, r.dropped, r.dropped_total, r.queued) for r in drops] == [
                ("WARNING", 1, 1, 5)]
            assert not wait_for(lambda: len(logged("audit repository unreachable; retrying"))
                                > 1, timeout=1)
        finally:
            sink.close(0)
        assert [(r.dropped, r.queued) for r in logged("audit repository: messages not "
                                                      "delivered")] == [(45, 5)]

        caplog.clear()
        every = SyslogTlsSink(HOST, free_port(), receiver.client_context(), queue_size=5,
                              first_backoff=60, drop_warning_interval=0).start()
        try:
            for _ in range(8):
                every.send(XML)
        finally:
            every.close(0)
        drops = logged("audit repository: queue full, oldest messages dropped")
        assert [(r.dropped, r.dropped_total) for r in drops] == [(1, 1), (1, 2), (1, 3)]


def test_a_connection_the_repository_closed_is_not_written_into(tmp_path: Path) -> None:
    """The repository closes the connection after the first message (as it closes an idle
    one). The next message goes over a new connection: written into the closed one, it
    would be taken by the kernel, counted as sent and lost."""
    receiver = SyslogTlsReceiver(tmp_path, close_after=1).start()
    sink = SyslogTlsSink(HOST, receiver.port, receiver.client_context(),
                         server_name="localhost").start()

    def message(n: int) -> str:
        return am.application_activity(am.Participant("MIMIC", False, (am.APPLICATION,)),
                                       True, f"MIMIC-{n}").to_xml()

    try:
        sink.send(message(1))
        assert wait_for(lambda: receiver.closed == 1)
        sink.send(message(2))
        sink.send(message(3))
        assert wait_for(lambda: any(b"MIMIC-3" in m for m in receiver.messages))
        assert [n for n in (1, 2, 3) if any(f"MIMIC-{n}".encode() in m
                                            for m in receiver.messages)] == [1, 2, 3]
        assert sink.sent == 3 and sink.pending() == 0
    finally:
        sink.close()
        receiver.stop()


def test_a_connection_past_fd_setsize_is_looked_at() -> None:
    """A server holding many connections gives its syslog connection a descriptor past
    1024, where select() raises ValueError: the sender thread would have died with it."""
    import os
    import resource
    import socket

    from mimic_server.security.syslog_tls import _closed_by_peer

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1600:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))

    class _Connection(socket.socket):
        def pending(self) -> int:  # as ssl.SSLSocket's: no TLS record held back
            return 0

    ours, theirs = socket.socketpair()
    high = os.dup2(ours.fileno(), 1500)
    ours.close()
    connection = _Connection(fileno=high)
    try:
        assert not _closed_by_peer(connection, 1.0)  # type: ignore[arg-type]
        theirs.close()
        assert _closed_by_peer(connection, 1.0)  # type: ignore[arg-type]
    finally:
        connection.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_a_client_certificate_the_repository_refuses_loses_no_message(
    tmp_path: Path, version: str
) -> None:
    """TLS 1.3: the handshake ends on the client's side before the repository has checked
    the client certificate, and its refusal (an alert) comes after. Each message was
    written into such a connection, counted as sent and lost: ``sent`` 3, the repository
    nothing, the queue empty. They now stay queued (and are said unreachable) until a
    connection is accepted. TLS 1.2 checks the certificate within the handshake: its
    refusal is noticed as well (the operator guide once said it was not)."""
    import ssl

    from tests.support import write_cert

    receiver = SyslogTlsReceiver(tmp_path / "repository").start()
    other_ca = write_cert(tmp_path / "other", "other-ca", ca=True)
    stranger = write_cert(tmp_path / "other", "stranger", issuer=(other_ca[2], other_ca[3]))
    context = ssl.create_default_context(cafile=str(receiver.ca[0]))
    context.load_cert_chain(str(stranger[0]), str(stranger[1]))
    context.maximum_version = ssl.TLSVersion[version]
    sink = SyslogTlsSink(HOST, receiver.port, context, server_name="localhost",
                         first_backoff=0.05, max_backoff=0.2).start()
    try:
        for _ in range(3):
            sink.send(XML)
        time.sleep(1.5)  # several connections tried and refused
        assert (sink.sent, sink.pending(), len(receiver.messages)) == (0, 3, 0)
        sink.use_context(receiver.client_context())  # the certificate put right
        assert wait_for(lambda: len(receiver.messages) == 3, timeout=15)
        assert sink.sent == 3 and sink.pending() == 0
    finally:
        sink.close()
        receiver.stop()
