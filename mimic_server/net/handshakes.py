"""TLS handshakes in flight, all driven by one thread: a pending handshake costs no thread.

A connection that has not finished its handshake is not yet anyone: it may be a modality, a
health probe, a port scan or an attacker holding sockets open. Behind a TCP ingress (Azure
Container Apps) every peer has the ingress's address, so nothing here looks at addresses.
Each pending handshake is a non-blocking socket in a selector, so the cap can be large; when
it is reached, the newest connection evicts the oldest pending one instead of being refused.

The victim is the oldest connection that has been silent for longer than :data:`GRACE`, and
if there is none, strictly the oldest. A real client sends its ClientHello within the grace
period, so an idle flood cannot keep a modality's handshake from finishing. A byte buys a
peer nothing a real client does not get anyway: an earlier version spared every peer that
had sent a byte, young or old, so an attacker's one byte (0x16) made a modality whose
ClientHello was still on its way through a TCP proxy the preferred victim of the very next
connection. Now a connection younger than the grace period is never preferred, heard or
not; among the rest, age alone decides. A connection gets no association slot until its
handshake is done; each has a deadline.
"""

from __future__ import annotations

import contextlib
import logging
import select
import selectors
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

TIMEOUT_REASON = "TLS handshake failed: TimeoutError"
EVICTED_REASON = "evicted: too many connections waiting for their handshake"
#: Seconds in which a new connection that has not sent a byte yet is not preferred for
#: eviction: time for a ClientHello delayed by a TCP proxy (Container Apps' ingress).
GRACE = 0.2


@dataclass
class _Pending:
    sock: ssl.SSLSocket
    fd: int
    address: Any
    deadline: float
    admitted: float
    heard: bool = False  # has the peer sent anything (its ClientHello) yet
    events: int = field(default=0)


class PendingHandshakes:
    """Runs the server side of TLS handshakes without a thread per connection.

    ``on_done(sock, address)`` gets each socket whose handshake completed (in this thread;
    it must not block); ``on_failed(address, reason)`` each one that failed, timed out or was
    evicted (its socket is closed right after).
    """

    def __init__(
        self,
        capacity: int,
        timeout: float,
        on_done: Callable[[ssl.SSLSocket, Any], None],
        on_failed: Callable[[Any, str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        grace: float = GRACE,
    ) -> None:
        """``clock`` is injectable for tests; ``grace`` is :data:`GRACE`."""
        self.capacity = capacity
        self.timeout = timeout
        self.grace = grace
        self._clock = clock
        self._shed = 0  # evictions asked for by the accept loop (out of descriptors)
        self._on_done = on_done
        self._on_failed = on_failed
        self._selector = selectors.DefaultSelector()
        self._pending: OrderedDict[int, _Pending] = OrderedDict()  # oldest first
        self._incoming: list[tuple[ssl.SSLSocket, Any]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mimic-handshakes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def __len__(self) -> int:
        """Handshakes in progress, also those handed over and not yet taken in."""
        with self._lock:
            incoming = len(self._incoming)
        return len(self._pending) + incoming

    def add(self, sock: ssl.SSLSocket, address: Any) -> None:
        """Take a freshly accepted, not yet handshaken socket (from the accept loop)."""
        with self._lock:
            self._incoming.append((sock, address))
        with contextlib.suppress(OSError):  # full: a wake-up is already on its way
            self._wake_w.send(b"\0")

    def shed(self) -> None:
        """Evict the oldest pending handshake soon (the accept loop ran out of descriptors);
        thread-safe, never blocks."""
        with self._lock:
            self._shed += 1
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def stop(self) -> None:
        """End the thread and close every pending connection."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        for entry in list(self._pending.values()):
            self._close(entry)
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for sock, _ in incoming:
            _close_quietly(sock)
        self._wake_r.close()
        self._wake_w.close()

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._turn()
            except Exception:  # a bug here must not end the listener: log it, go on
                log.exception("handshake loop error")
                time.sleep(0.05)

    def _turn(self) -> None:
        # Nothing pending: block until the accept loop hands over a socket, asks for an
        # eviction or the stop (each writes the wake-up socket); an idle listener's
        # handshake thread never wakes.
        wait = None
        if self._pending:
            oldest = next(iter(self._pending.values()))
            wait = max(0.0, oldest.deadline - self._clock())
        for key, _ in self._selector.select(wait):
            if key.fileobj is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
                continue
            entry = self._pending.get(key.fd)
            if entry is not None:
                entry.heard = True
                self._step(entry)
        self._take_incoming()
        self._expire()

    def _take_incoming(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
            shed, self._shed = self._shed, 0
        for _ in range(min(shed, len(self._pending))):
            self._fail(next(iter(self._pending.values())), EVICTED_REASON)
        for sock, address in incoming:
            if self._stop.is_set():
                _close_quietly(sock)
                continue
            while len(self._pending) >= self.capacity:
                self._evict()
            now = self._clock()
            entry = _Pending(sock, sock.fileno(), address, now + self.timeout, now)
            entry.heard = _readable(entry.fd)  # a real client's ClientHello is already here
            self._pending[entry.fd] = entry
            self._step(entry)

    def _evict(self) -> None:
        """The oldest connection silent beyond the grace period, else strictly the oldest
        (the table is in admission order, so the scan stops at the first young entry)."""
        settled = self._clock() - self.grace
        victim = None
        for entry in self._pending.values():
            if entry.admitted > settled:
                break
            if not entry.heard:
                victim = entry
                break
        if victim is None:
            victim = next(iter(self._pending.values()))
        self._fail(victim, EVICTED_REASON)

    def _expire(self) -> None:
        now = self._clock()
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline > now:
                return
            self._fail(oldest, TIMEOUT_REASON)

    def _step(self, entry: _Pending) -> None:
        try:
            entry.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(entry, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(entry, selectors.EVENT_WRITE)
            return
        except ssl.SSLCertVerificationError as exc:
            # OpenSSL's reason is CERTIFICATE_VERIFY_FAILED whatever failed: an untrusted
            # certificate, an expired one, one for servers only, a 1024-bit key (refused at
            # OpenSSL's security level though its entry was trusted). The verification's
            # own message (a fixed OpenSSL string, no value of the certificate) tells the
            # operator which.
            detail = f" ({exc.verify_message})" if exc.verify_message else ""
            self._fail(entry, f"TLS handshake failed: {exc.reason or exc}{detail}")
            return
        except ssl.SSLError as exc:
            self._fail(entry, f"TLS handshake failed: {exc.reason or exc}")
            return
        except OSError as exc:
            self._fail(entry, f"TLS handshake failed: {type(exc).__name__}")
            return
        self._forget(entry)
        try:
            self._on_done(entry.sock, entry.address)
        except Exception:
            log.exception("admitting a connection failed; closing it")
            _close_quietly(entry.sock)

    def _watch(self, entry: _Pending, events: int) -> None:
        if entry.events == events:
            return
        if entry.events:
            self._selector.modify(entry.sock, events)
        else:
            self._selector.register(entry.sock, events)
        entry.events = events

    def _forget(self, entry: _Pending) -> None:
        self._pending.pop(entry.fd, None)
        if entry.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(entry.sock)
            entry.events = 0

    def _close(self, entry: _Pending) -> None:
        self._forget(entry)
        _close_quietly(entry.sock)

    def _fail(self, entry: _Pending, reason: str) -> None:
        # Told first, closed second: whoever sees the close can already read the reason.
        self._forget(entry)
        try:
            self._on_failed(entry.address, reason)
        finally:
            _close_quietly(entry.sock)


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
