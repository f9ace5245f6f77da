"""Audit messages to an audit repository over syslog/TLS (IHE ATNA: RFC 5424 messages,
RFC 5425 transport with octet-counting framing, ``MSGID`` ``IHE+RFC-3881``).

DICOM traffic never waits for the audit repository: ``send`` only puts the message on a
bounded queue; one thread keeps a TLS connection (client certificate, verified server) and
sends, reconnecting with backoff. When the queue is full, by count or by bytes, the oldest
messages are dropped and counted (the durable trail, the file or the database table, still
has them). Bytes bound it too: a count alone let a repository that was down hold the
process's memory hostage to the size of the messages.

A drop is never silent while the server runs: the first is logged at WARNING at once, later
ones at most once per ``drop_warning_interval`` (with how many since the last line and in
all), and ``sent``, ``dropped``, ``pending()`` and ``queued_bytes`` are the metrics
``app.py`` exports (``mimic_audit_syslog_*``).

A repository (or a load balancer before it) closes a connection it finds idle, and a write
into a connection the peer has closed still succeeds: the kernel takes the bytes and the
peer's answer, a reset, comes after. So before each message the sender looks whether the
repository has closed its side (RFC 5425: a receiver sends nothing, so anything to read is
its close, or TLS housekeeping), and reconnects instead of losing that message.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
import ssl
import threading
import time
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

#: RFC 5424 facility 10 (security/authorization), severity 5 (notice) / 4 (warning).
_FACILITY = 10
NOTICE, WARNING = 5, 4
MSGID = "IHE+RFC-3881"


def frame(xml: str, *, severity: int = NOTICE, hostname: str = "-", app: str = "MIMIC",
          procid: str | None = None, when: datetime | None = None) -> bytes:
    """One RFC 5424 message carrying ``xml``, with RFC 5425's ``MSG-LEN SP`` in front."""
    stamp = (when or datetime.now(UTC)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = (f"<{_FACILITY * 8 + severity}>1 {stamp} {_field(hostname, 255)} {_field(app, 48)} "
              f"{_field(procid or str(os.getpid()), 128)} {MSGID} - ")
    message = header.encode("ascii") + b"\xef\xbb\xbf" + xml.encode("utf-8")
    return str(len(message)).encode("ascii") + b" " + message


def _field(value: str, limit: int) -> str:
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


class SyslogTlsSink:
    """Sends audit messages to ``host:port`` over TLS from a bounded in-memory queue."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        server_name: str | None = None,
        queue_size: int = 10_000,
        queue_bytes: int = 64 * 1024 * 1024,
        connect_timeout: float = 5.0,
        first_backoff: float = 0.5,
        max_backoff: float = 30.0,
        hostname: str | None = None,
        drop_warning_interval: float = 60.0,
    ) -> None:
        self.host, self.port = host, port
        self._context = context
        self._server_name = server_name or host
        self._queue: collections.deque[bytes] = collections.deque()
        self._queue_size, self._queue_bytes = queue_size, queue_bytes
        #: Bytes of the messages queued (kept with the queue, under ``_ready``).
        self.queued_bytes = 0
        self._ready = threading.Condition()
        self._stop = False
        self._timeout = connect_timeout
        self._first_backoff, self._max_backoff = first_backoff, max_backoff
        self._hostname = hostname or socket.gethostname()
        self.sent = 0
        self.dropped = 0
        self._drop_warning_interval = drop_warning_interval
        self._warned_at: float | None = None  # monotonic time of the last drop's WARNING
        self._dropped_warned = 0  # ``dropped`` when it was written
        self._thread = threading.Thread(target=self._run, name="mimic-audit-syslog", daemon=True)

    def start(self) -> SyslogTlsSink:
        self._thread.start()
        return self

    def send(self, xml: str, failure: bool = False) -> None:
        """Queue one message; never blocks, drops the oldest queued ones while the queue holds
        more than ``queue_size`` messages or ``queue_bytes`` bytes (the newest always stays:
        one message over the byte bound is still sent)."""
        data = frame(xml, severity=WARNING if failure else NOTICE, hostname=self._hostname)
        warning: dict[str, Any] | None = None
        with self._ready:
            self._queue.append(data)
            self.queued_bytes += len(data)
            dropped = self.dropped
            while len(self._queue) > 1 and (len(self._queue) > self._queue_size
                                            or self.queued_bytes > self._queue_bytes):
                self.queued_bytes -= len(self._queue.popleft())
                self.dropped += 1
            if self.dropped != dropped:
                warning = self._drop_warning()
            self._ready.notify()
        if warning is not None:  # outside the lock: a slow log handler delays no other sender
            log.warning("audit repository: queue full, oldest messages dropped", extra=warning)

    def _drop_warning(self) -> dict[str, Any] | None:
        """The fields of a WARNING about drops, if one is due (under ``_ready``)."""
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < self._drop_warning_interval:
            return None
        self._warned_at = now
        since, self._dropped_warned = self.dropped - self._dropped_warned, self.dropped
        return {"repository": f"{self.host}:{self.port}", "dropped": since,
                "dropped_total": self.dropped, "queued": len(self._queue)}

    def write(self, entry: Any, details: dict[str, Any]) -> None:
        """As an audit sink (``security.audit``): queue the entry's XML, a failure as a
        warning."""
        self.send(entry.xml, failure=entry.outcome != 0)

    def pending(self) -> int:
        return len(self._queue)

    def use_context(self, context: ssl.SSLContext) -> None:
        """Connect with ``context`` from now on (the archive's own certificate, renewed:
        ``mimic serve`` builds it again from each new bundle). The connection open now is
        kept; the next one, after the repository closes it or fails, presents the new
        certificate. Kept from the start, the first renewal left every later connection
        with the old certificate, refused by the repository once it expired."""
        with self._ready:
            self._context = context

    def close(self, flush_seconds: float = 2.0) -> None:
        """Stop after trying to send what is queued for up to ``flush_seconds``."""
        deadline = time.monotonic() + flush_seconds
        while self._queue and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        with self._ready:
            self._stop = True
            self._ready.notify()
        if self._thread.is_alive():
            self._thread.join(self._timeout + 1)
        if self._queue or self.dropped:
            log.warning("audit repository: messages not delivered",
                        extra={"queued": len(self._queue), "dropped": self.dropped})

    # -- the sender thread ---------------------------------------------------------------

    def _run(self) -> None:
        backoff = self._first_backoff
        connection: ssl.SSLSocket | None = None
        while True:
            with self._ready:
                while not self._queue and not self._stop:
                    self._ready.wait()
                if self._stop:
                    break
                data = self._queue[0]
            try:
                if connection is not None and _closed_by_peer(connection, self._timeout):
                    connection.close()
                    connection = None
                if connection is None:
                    connection = self._connect()
                    backoff = self._first_backoff
                connection.sendall(data)
            except (OSError, ssl.SSLError) as exc:
                log.warning("audit repository unreachable; retrying",
                            extra={"repository": f"{self.host}:{self.port}",
                                   "error": type(exc).__name__, "queued": len(self._queue)})
                if connection is not None:
                    connection.close()
                    connection = None
                self._back_off(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            with self._ready:
                if self._queue and self._queue[0] is data:  # not dropped meanwhile
                    self._queue.popleft()
                    self.queued_bytes -= len(data)
                self.sent += 1
        if connection is not None:
            connection.close()

    def _back_off(self, seconds: float) -> None:
        """Wait ``seconds`` before the next attempt, or until stopped. A new message does not
        end the wait: it did, so with the repository down every audit record was a connection
        attempt and a WARNING line."""
        deadline = time.monotonic() + seconds
        with self._ready:
            while not self._stop and (left := deadline - time.monotonic()) > 0:
                self._ready.wait(left)

    def _connect(self) -> ssl.SSLSocket:
        with self._ready:
            context = self._context
        raw = socket.create_connection((self.host, self.port), timeout=self._timeout)
        try:
            connection = context.wrap_socket(raw, server_hostname=self._server_name)
        except BaseException:
            raw.close()
            raise
        try:
            if _refused_after_handshake(connection, min(self._timeout, SETTLE_SECONDS)):
                raise ssl.SSLError("the audit repository refused the connection after the "
                                   "handshake (its check of the client certificate)")
        except BaseException:
            connection.close()
            raise
        return connection


#: How long a new TLS 1.3 connection is given to be refused before a message goes over it.
SETTLE_SECONDS = 1.0


def _refused_after_handshake(connection: ssl.SSLSocket, wait: float) -> bool:
    """Whether the repository refused a TLS 1.3 connection once its handshake was done.

    In TLS 1.3 the client's handshake ends before the server has checked the client
    certificate: a repository that refuses it answers with an alert after the handshake,
    and the first message, written into the connection all the same, was lost while
    counted as sent (every message, one connection each: ``sent`` rose, the repository
    got nothing). A server that accepted sends its session tickets then (OpenSSL: two),
    one that refused its alert: wait for either, ``wait`` seconds at most (a server that
    sends no tickets costs that once per connection). TLS 1.2 checks the client
    certificate within the handshake."""
    if connection.version() != "TLSv1.3":
        return False
    readable = select.poll()
    readable.register(connection, select.POLLIN)
    if not readable.poll(int(wait * 1000)) and not connection.pending():
        return False
    return _closed_by_peer(connection, wait)


def _closed_by_peer(connection: ssl.SSLSocket, timeout: float) -> bool:
    """Whether the repository has closed its side of ``connection`` (a close_notify, a FIN,
    a reset), without waiting. Readable is not enough: TLS 1.3 session tickets arrive after
    the handshake and make it readable too; a read that finds no application data and would
    block says the connection is open. Data the repository should not send is read and
    dropped."""
    # poll(), not select(): a server holding many connections has descriptors past
    # FD_SETSIZE (1024), where select() raises ValueError and would end the sender thread.
    readable = select.poll()
    readable.register(connection, select.POLLIN)
    if not readable.poll(0) and not connection.pending():
        return False
    connection.setblocking(False)
    try:
        # An empty read is a close_notify, or a FIN without one (a ragged EOF).
        return any(not connection.recv(65536) for _ in range(16))
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    except OSError:  # reset, or a TLS alert
        return True
    finally:
        connection.settimeout(timeout)
