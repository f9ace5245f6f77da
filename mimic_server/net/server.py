"""The association server: pynetdicom's threaded server with the handshake off the accept loop.

What this adds to ``ThreadedAssociationServer``, each for a trap seen in practice:

* the TLS handshake runs off the accept loop, with a deadline, in one thread for all pending
  handshakes (:mod:`.handshakes`), so a client that never sends a ClientHello delays nobody
  (pynetdicom wraps in the accept loop) and a flood of them cannot lock modalities out: the
  oldest pending handshake is evicted, not the newest connection refused;
* out of file descriptors (EMFILE/ENFILE), the accept loop evicts the oldest pending
  handshake and backs off briefly instead of spinning on the readable listening socket
  (socketserver retries at once), with one log line per interval;
* a refused connection is logged once per source and reason per interval, the first at once
  and the rest as one count (``on_refused`` says which), not one line each;
* a listen backlog of ``listen_backlog`` (socketserver's default is 5: a burst of connects
  dropped SYNs);
* nothing in the accept loop or the handshake loop can end the listener: errors are logged
  at ERROR and the connection closed;
* every accepted socket gets TCP_NODELAY and a read timeout, so a peer that stalls mid-PDU is
  dropped instead of holding two threads forever;
* the PDU length a peer announces is checked before anything is allocated for it;
* the peer certificate becomes an :class:`~.identity.Identity` before an association exists;
* associations are counted by their open sockets, so TCP probes and port scans that close
  without an A-ASSOCIATE-RQ do not use up the association limit;
* no SO_REUSEPORT: a second archive started on the same port by mistake must fail, not
  silently take half of the connections. Several worker processes (``MIMIC_WORKERS``) share
  one listening socket instead, bound by their supervisor and inherited (``listening_socket``):
  whichever worker is free accepts, and a worker that drains just closes its copy;
* a new trust set swaps the ``SSLContext`` atomically and aborts associations whose
  certificate is no longer trusted;
* an association stops counting when its connection closes (``EVT_CONN_CLOSE``) or its
  thread ends, whichever comes first, not when a collection frees the socket pynetdicom
  left open; ``on_associations_changed`` is told at both (a worker publishes its count to
  the others then, instead of on a timer);
* with ``event_driven_accept`` (the fence's ``accept-waits``) the accept loop blocks until a
  connection, its shutdown or a due collection instead of waking every ``poll_interval``: an
  idle listener does not wake at all;
* with several workers (an ``accept_share``), every worker's accept loop wakes for each new
  connection and the first to call ``accept()`` gets it, so one worker could end up with
  most of the associations (four at once: 4 / 0 or 3 / 1 about half the time) while the
  other's core idles. A worker that holds more connections than another accepting worker
  therefore leaves a new connection to that one for up to :data:`ACCEPT_DEFERRAL`, and takes
  it itself only if it is still waiting then: the spread evens out, and a connection never
  waits longer than that for it.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import select
import selectors
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from pynetdicom import evt
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from mimic_server.certs.trust import TrustIndex
from mimic_server.net.acknowledge import acknowledging
from mimic_server.net.handshakes import PendingHandshakes
from mimic_server.security.identity import (
    ANONYMOUS,
    Identity,
    attach_identity,
    peer_identity,
)

log = logging.getLogger(__name__)

#: Seconds the accept loop pauses after running out of file descriptors (time for the
#: evicted handshake's descriptor to be freed), and between two log lines saying so.
FD_BACKOFF = 0.05
FD_LOG_INTERVAL = 60.0
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})

#: The event-driven accept loop's full collection (pynetdicom's loop runs ``gc.collect()``
#: every 60 turns, "dead Association threads aren't being garbage collected", and turned
#: every 0.2 s): after :data:`COLLECT_AFTER` seconds from the first accepted connection or
#: ended association since the last collection, or after :data:`COLLECT_EVERY` accepts;
#: never while nothing happened.
COLLECT_AFTER = 12.0
COLLECT_EVERY = 60
#: Seconds :meth:`MimicAssociationServer.shutdown` waits for the accept loop to end (it wakes
#: at once; at worst it finishes one accept or one full collection, ~0.1 s) before it closes
#: the listening socket anyway and says so.
ACCEPT_STOP_WAIT = 10.0
#: Seconds a worker holding more connections than another leaves a new connection waiting
#: for that one to accept it: long enough for a worker busy with associations to get its
#: accept thread the GIL (the switch interval is 5 ms), short beside an association's set-up.
ACCEPT_DEFERRAL = 0.05


class AcceptShare(Protocol):
    """What a worker process knows of the others' connections (``workers/``)."""

    def hold(self, held: int) -> None:
        """Publish how many connections this worker holds."""

    def another_holds_fewer(self, held: int) -> bool:
        """Whether another accepting worker holds fewer than ``held``."""

    def stop_accepting(self) -> None:
        """This worker accepts no more: no other worker is to wait for it."""


#: PDU types a peer may open an association with (PS3.8 9.2: in Sta2 anything else is
#: answered A-ABORT, AA-1): A-ASSOCIATE-RQ, or A-ABORT.
_FIRST_PDU_TYPES = frozenset({0x01, 0x07})
#: The PDU types of PS3.8 9.3 (A-ASSOCIATE-RQ to A-ABORT), as pynetdicom's reader knows them.
PDU_TYPES = frozenset(range(0x01, 0x08))


class _GuardedAssociationSocket(AssociationSocket):
    """Refuses a read longer than any PDU we accept (the DUL reads a PDU in one call), and
    ends a connection whose peer sent garbage as soon as it is answered.

    pynetdicom reads a PDU as two ``recv`` calls, the 6-byte header and then the body. On a
    PDU of unknown type it stops after the header and answers A-ABORT, but leaves the body
    in the socket: its next header read then blocks on those bytes until the network
    timeout, and after the A-ABORT it waits for the peer to close (ARTIM, 30 s), the
    connection holding its slot all along. Here, after an unknown PDU type, or a first PDU
    that is not an A-ASSOCIATE-RQ, reads report the transport closed, and the A-ABORT is
    followed by the close.

    A whole PDU, header and body, must arrive within one network timeout (the first, the
    A-ASSOCIATE-RQ, within the ACSE timeout when that is shorter). The socket's timeout
    bounds each read alone: a peer sending one byte a minute kept the DUL thread in one
    PDU's read for good, where neither the ARTIM timer nor the idle timer is looked at, and
    held its association slot with it (two such peers locked every modality out).
    """

    max_read: int
    #: What a PDU may take, from its first byte to its last (None: no bound).
    pdu_time_limit: float | None = None
    #: The same for the first PDU.
    first_pdu_time_limit: float | None = None
    _deadline: float | None = None
    _headers_read = 0
    _in_body = False
    _garbage = False
    _close_after_send = False

    def recv(self, nr_bytes: int) -> bytearray:
        if self._garbage:
            raise OSError("the peer sent an invalid PDU")
        if not self._in_body:  # a PDU's header: its clock starts
            limit = self.first_pdu_time_limit if self._headers_read == 0 else self.pdu_time_limit
            self._deadline = None if limit is None else time.monotonic() + limit
        data = self._recv(nr_bytes)
        if self._in_body:
            self._in_body = False
            return data
        self._in_body = True
        first = self._headers_read == 0
        self._headers_read += 1
        if data:
            self._garbage = data[0] not in PDU_TYPES
            self._close_after_send = self._garbage or (first and data[0] not in _FIRST_PDU_TYPES)
        return data

    def recv_after_header(self, header: bytearray, nr_bytes: int) -> bytearray:
        """The body of the PDU whose ``header`` :meth:`recv` has just returned, read into one
        buffer after a copy of that header: the whole PDU, as pynetdicom's reader makes it
        by appending the body to the header, but without that copy of every body byte
        (``_EventDrivenDUL._read_pdu_data``)."""
        if self._garbage:  # as recv(); the reader never asks for the body of such a PDU
            raise OSError("the peer sent an invalid PDU")
        if not self._in_body:  # an assertion: the reader reads each header first
            raise RuntimeError("a PDU body read before its header")
        data = self._recv(nr_bytes, header)
        self._in_body = False  # as recv(): only after a read that did not raise
        return data

    def send(self, bytestream: bytes) -> None:
        """Send; once the peer is known to send garbage, close the transport after it.

        The only thing we send then is pynetdicom's A-ABORT answer.
        """
        super().send(bytestream)
        if self._close_after_send and self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)
            # Closed here: pynetdicom's own close skips close() when shutdown() fails, as it
            # does on a socket already shut down. The DUL sees the transport closed (Evt17).
            self.socket.close()

    def _recv(self, nr_bytes: int, prefix: bytearray | bytes = b"") -> bytearray:
        """Read ``nr_bytes`` (fewer if the peer closes), straight into one buffer that
        begins with ``prefix``.

        pynetdicom reads in 4 KiB pieces and appends each: ten calls and copies for a small
        CT slice, over a hundred for a 0.5 MB image. The length is bounded above, so the
        buffer is allocated once, at its final size.
        """
        if nr_bytes > self.max_read:
            raise OSError(f"peer announced a {nr_bytes}-byte PDU, over {self.max_read}")
        sock = cast(socket.socket, self.socket)
        acknowledge = acknowledging(sock)  # a peer with Nagle on: net/acknowledge.py
        within = None
        if self._deadline is not None:
            acknowledge = within = _Within(sock, self._deadline, acknowledge)
        try:
            return self._read_into(sock, acknowledge, nr_bytes, prefix)
        finally:
            if within is not None:
                within.restore()

    @staticmethod
    def _read_into(sock: socket.socket, acknowledge: Callable[[], None], nr_bytes: int,
                   prefix: bytearray | bytes) -> bytearray:
        start = len(prefix)
        buffer = bytearray(start + nr_bytes)
        buffer[:start] = prefix
        received = 0
        with memoryview(buffer) as view:
            if isinstance(sock, ssl.SSLSocket):
                # What SSLSocket.recv_into(view) calls for a read without flags, one frame
                # sooner: OpenSSL hands over a TLS record (16 KiB at most) a call, some forty
                # calls for a 0.5 MB data set.
                read = sock.read
                while received < nr_bytes:
                    acknowledge()
                    rest = view[start + received:]
                    try:
                        count = read(nr_bytes - received, rest)
                    except ValueError:  # closed or unwrapped: recv_into's own answer
                        count = sock.recv_into(rest)
                    del rest  # released before the next slice is made, as `with` would
                    if not count:
                        break  # the peer closed: what was read, as pynetdicom returns it
                    received += count
            else:
                while received < nr_bytes:
                    acknowledge()
                    with view[start + received:] as rest:
                        count = sock.recv_into(rest)
                    if not count:
                        break
                    received += count
        return buffer if received == nr_bytes else buffer[:start + received]


class _Within:
    """Called before each read of one PDU: refuses the read once the PDU's deadline has
    passed, and lowers the socket's timeout to what is left of it (only when that is over
    a second shorter, so not on every read of a PDU that comes at once), putting it back
    when the PDU has been read."""

    __slots__ = ("_acknowledge", "_deadline", "_set", "_sock", "_timeout")

    def __init__(self, sock: socket.socket, deadline: float,
                 acknowledge: Callable[[], None]) -> None:
        self._sock, self._deadline, self._acknowledge = sock, deadline, acknowledge
        self._timeout = self._set = sock.gettimeout()

    def __call__(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            # Said here: pynetdicom's log of the closed transport is off, and an operator
            # must tell this from other aborts (a slow link may need MIMIC_NETWORK_TIMEOUT).
            log.warning("a PDU was not received whole within its time limit: connection "
                        "dropped", extra={"peer": _peer_of(self._sock)})
            raise TimeoutError("a PDU was not received whole within its time limit")
        if self._set is None or left < self._set - 1.0:
            self._sock.settimeout(left)
            self._set = left
        self._acknowledge()

    def restore(self) -> None:
        if self._set != self._timeout:
            with contextlib.suppress(OSError):  # closed meanwhile: nothing to restore
                self._sock.settimeout(self._timeout)


def _peer_of(sock: socket.socket) -> str:
    try:
        return _peer(sock.getpeername())
    except OSError:
        return "unknown"


def guard_pdu_reads(assoc: Any, max_read: int) -> None:
    """Swap a new association's socket for :class:`_GuardedAssociationSocket`.

    Applied, or not, by the fence (``mimic_server/patches.py``), which checks first that
    pynetdicom's ``AssociationSocket.recv`` and its caller are the ones verified. The time
    limits of a PDU are the connection's network timeout (its socket's timeout, set when it
    was accepted) and, for the first, the association's ACSE timeout when shorter.
    """
    sock = assoc.dul.socket
    sock.__class__ = _GuardedAssociationSocket
    sock.max_read = max_read
    network = sock.socket.gettimeout() if sock.socket is not None else None
    acse = assoc.acse_timeout
    sock.pdu_time_limit = network
    sock.first_pdu_time_limit = min(
        (t for t in (network, acse) if t is not None and t > 0), default=None)


class _RequestHandler(RequestHandler):
    server: MimicAssociationServer

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        self.server.adapt_association(assoc)  # the patches the fence applies (patches.py)
        identity = self.server.admitted_identity(self.request)
        if identity is not None:
            attach_identity(assoc, identity)
        assoc.bind(evt.EVT_CONN_CLOSE, _end_wait_for_request)
        server, request = self.server, self.request
        assoc.bind(evt.EVT_CONN_CLOSE, lambda event: server.connection_closed(request))
        run = assoc.run

        def run_then_tell() -> None:  # the thread's end: its association no longer counts
            try:
                run()
            finally:
                server.association_ended(request)

        assoc.run = run_then_tell
        return assoc


def _end_wait_for_request(event: Any) -> None:
    """A peer that closes before its A-ASSOCIATE-RQ (a probe) ends its thread now.

    pynetdicom's acceptor thread waits for the A-ASSOCIATE-RQ until the ACSE timeout even
    after the DUL saw the connection close (Sta2 + Evt17, AA-5). Meanwhile a TLS probe that
    reset the connection (closing with our session tickets unread) kept its socket open,
    hence its slot of the association limit, because pynetdicom skips close() when
    shutdown() fails; and ``stop()`` drained it as an open association. In Sta2 no request
    was received and none can come: an empty item ends the wait as a timeout would, and the
    thread then closes the socket.

    The same holds in Sta13 before any A-ASSOCIATE-RQ: a peer that sent an unknown or
    malformed PDU first was answered A-ABORT (AA-1) and, once it closed, pynetdicom's thread
    would again wait out the ACSE timeout holding the slot.
    """
    assoc = event.assoc
    dul = assoc.dul
    state = dul.state_machine.current_state
    if state == "Sta2" or (state == "Sta13" and assoc.requestor.primitive is None):
        dul.to_user_queue.put(None)


class MimicAssociationServer(ThreadedAssociationServer):
    """A TLS (or, for labs, plain) DICOM listener; see the module docstring."""

    daemon_threads = True

    def __init__(
        self,
        ae: Any,
        address: tuple[str, int],
        ae_title: str,
        contexts: Sequence[Any],
        *,
        ssl_context: ssl.SSLContext | None,
        trust: TrustIndex | None,
        handshake_timeout: float,
        network_timeout: float,
        max_pdu_read: int,
        max_pending_handshakes: int,
        listen_backlog: int = 128,
        on_refused: Callable[[str, str], bool] | None = None,
        adapt_association: Callable[[Any], None] = lambda assoc: None,
        listening_socket: socket.socket | None = None,
        on_associations_changed: Callable[[], None] = lambda: None,
        event_driven_accept: bool = False,
        accept_share: AcceptShare | None = None,
    ) -> None:
        """``adapt_association`` applies the fence's per-association patches to each new
        association (``mimic_server/patches.py``); the default leaves pynetdicom's.
        ``on_refused(peer, reason)`` counts a refusal and returns whether to log it now
        (the first of its source and reason in an interval); without it, each is logged.
        ``listening_socket``: a socket already bound and listening, shared with other worker
        processes; ``address`` is then not bound. ``on_associations_changed()`` is called
        (in the association's threads) when a connection counted by
        :meth:`live_associations` closes and when an association's thread ends.
        ``event_driven_accept``: :meth:`serve_forever` blocks instead of polling (applied,
        or not, by the fence: ``mimic_server/patches.py``, ``accept-waits``).
        ``accept_share``: the other workers' held connections, for an even spread (with
        ``event_driven_accept`` only)."""
        self._inherited = listening_socket
        self._accept_share = accept_share
        self._accepting = False  # published as holding connections (accept_share)
        self._held_lock = threading.Lock()
        self.on_associations_changed = on_associations_changed
        self._event_driven_accept = event_driven_accept
        self._accept_wake_r, self._accept_wake_w = socket.socketpair()
        self._accept_wake_r.setblocking(False)
        self._accept_wake_w.setblocking(False)
        self._accept_stop = False
        self._accept_stopped = threading.Event()
        self._garbage_since: float | None = None
        self._accepts_since_collection = 0
        self.trust = trust
        self.handshake_timeout = handshake_timeout
        self.network_timeout = network_timeout
        self.max_pdu_read = max_pdu_read
        self.on_refused = on_refused
        self.adapt_association = adapt_association
        self.request_queue_size = listen_backlog  # read by server_activate's listen()
        self._identities: weakref.WeakKeyDictionary[socket.socket, Identity] = (
            weakref.WeakKeyDictionary()
        )
        self._live: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        #: Associations :meth:`abort_untrusted` has aborted (the abort takes a while).
        self._aborted_untrusted: weakref.WeakSet[Any] = weakref.WeakSet()
        #: Connections whose association was admitted (holds one of the limited slots).
        self._admitted: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._slot_lock = threading.Lock()  # one admission's count and claim at a time
        self._fd_exhausted = 0  # accept() failures since the last log line
        self._fd_logged = -FD_LOG_INTERVAL
        self.handshakes = PendingHandshakes(
            max_pending_handshakes, handshake_timeout, self._handshake_done, self._refuse
        )
        super().__init__(
            ae, address, ae_title, contexts, ssl_context, request_handler=_RequestHandler
        )
        self.handshakes.start()

    def server_bind(self) -> None:
        if self._inherited is None:
            super().server_bind()
            return
        cast(socket.socket, self.socket).close()  # the one socketserver made, unbound
        self.socket = self._inherited
        # Never wait in accept(): another worker may take the connection first.
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self._inherited is None:
            super().server_activate()  # else: listening already, with its backlog

    # -- the accept loop -------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept until :meth:`shutdown`; ``poll_interval`` only without
        ``event_driven_accept`` (socketserver's loop, which wakes that often)."""
        if not self._event_driven_accept:
            super().serve_forever(poll_interval)
            return
        self._accept_stopped.clear()
        with self._held_lock:
            self._accepting = True
        self._publish_held()
        try:
            with selectors.PollSelector() as selector, \
                    selectors.PollSelector() as wake_only:  # socketserver's choice on Linux
                selector.register(self.socket, selectors.EVENT_READ)
                selector.register(self._accept_wake_r, selectors.EVENT_READ)
                wake_only.register(self._accept_wake_r, selectors.EVENT_READ)
                while not self._accept_stop:
                    ready = selector.select(self._until_collection())
                    if self._accept_stop:
                        break
                    for key, _ in ready:
                        if key.fileobj is self._accept_wake_r:
                            with contextlib.suppress(OSError):
                                self._accept_wake_r.recv(4096)
                        elif not self._left_to_another_worker(wake_only):
                            self._handle_request_noblock()
                            self._publish_held()
                            self._accepts_since_collection += 1
                            self._note_garbage(wake=False)
                    self.service_actions()
        finally:
            with self._held_lock:
                self._accepting = False
                if self._accept_share is not None:
                    self._accept_share.stop_accepting()
            self._accept_stop = False
            self._accept_stopped.set()

    def connections_held(self) -> int:
        """Connections in their TLS handshake and past it: this worker's load."""
        with self._lock:
            past_handshake = sum(1 for s in list(self._live) if s.fileno() != -1)
        return len(self.handshakes) + past_handshake

    def _publish_held(self) -> None:
        share = self._accept_share
        if share is None:
            return
        with self._held_lock:
            if self._accepting:  # not over a drain's NOT_ACCEPTING
                share.hold(self.connections_held())

    def _left_to_another_worker(self, wake_only: selectors.BaseSelector) -> bool:
        """Whether the connection waiting is left to a worker that holds fewer (see the
        module's docstring): True when another worker took it while this one waited, or
        the loop is stopping; False to accept it here."""
        share = self._accept_share
        if share is None:
            return False
        held = self.connections_held()
        share.hold(held)
        if not share.another_holds_fewer(held):
            return False
        wake_only.select(ACCEPT_DEFERRAL)  # a wake-up (a stop) ends the wait early
        if self._accept_stop:
            return True
        waiting = select.poll()
        waiting.register(self.socket, select.POLLIN)
        return not waiting.poll(0)

    def shutdown(self) -> None:
        """Stop the accept loop and wait for it, close the listening socket, unregister
        from the AE: pynetdicom's ``AssociationServer.shutdown`` for this loop."""
        if not self._event_driven_accept:
            super().shutdown()
            return
        self._accept_stop = True
        self._wake_accept_loop()
        if not self._accept_stopped.wait(ACCEPT_STOP_WAIT):
            # A loop that does not wake must not keep the drain, the last counts and the
            # process's exit waiting for ever: the socket closes under it.
            log.error("the accept loop did not stop; closing its socket anyway",
                      extra={"waited_seconds": ACCEPT_STOP_WAIT})
        self.server_close()
        with contextlib.suppress(ValueError):
            self.ae._servers.remove(self)

    def _wake_accept_loop(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is on its way; closed: stopped
            self._accept_wake_w.send(b"\0")

    def _note_garbage(self, wake: bool) -> None:
        """Something may have left reference cycles: schedule a full collection."""
        with self._lock:
            if self._garbage_since is not None:
                return
            self._garbage_since = time.monotonic()
        if wake:  # the loop may be blocked with no timeout
            self._wake_accept_loop()

    def _until_collection(self) -> float | None:
        since = self._garbage_since
        return None if since is None else max(0.0, since + COLLECT_AFTER - time.monotonic())

    def service_actions(self) -> None:
        """After each turn of the loop (socketserver's hook): pynetdicom's collection every
        60 turns, or, in the event-driven loop, when due (:data:`COLLECT_AFTER`)."""
        if not self._event_driven_accept:
            super().service_actions()
            return
        since = self._garbage_since
        if self._accepts_since_collection < COLLECT_EVERY and (
            since is None or time.monotonic() - since < COLLECT_AFTER
        ):
            return
        with self._lock:
            self._garbage_since = None  # what ends during the collection schedules the next
        self._accepts_since_collection = 0
        gc.collect()

    def connection_closed(self, request: socket.socket) -> None:
        """``EVT_CONN_CLOSE``: the connection no longer counts, even where pynetdicom left
        its socket open (it skips ``close()`` when ``shutdown()`` fails) until collected."""
        with self._lock:
            self._live.discard(request)
            self._admitted.discard(request)
        self.on_associations_changed()
        self._publish_held()

    def association_ended(self, request: socket.socket) -> None:
        """An association's thread ends (in it; also after a DUL that died without
        ``EVT_CONN_CLOSE``): it no longer counts; tell, and schedule a collection."""
        with self._lock:
            self._live.discard(request)
            self._admitted.discard(request)
        self.on_associations_changed()
        self._publish_held()
        if self._event_driven_accept:
            self._note_garbage(wake=True)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            client, address = self.socket.accept()
        except OSError as exc:  # BlockingIOError: another worker accepted it (dropped turn)
            if exc.errno in _OUT_OF_DESCRIPTORS:
                self._out_of_descriptors(exc)
            raise  # socketserver drops the turn; the connection waits in the backlog
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = self.ssl_context  # read once: a concurrent swap affects the next connection
        if context is not None:
            client.setblocking(False)  # the handshake loop drives it
            client = context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def _out_of_descriptors(self, exc: OSError) -> None:
        """Free a descriptor (the oldest pending handshake goes) and pause the accept loop
        briefly; log it at most once per :data:`FD_LOG_INTERVAL` with a count."""
        self.handshakes.shed()
        self._fd_exhausted += 1
        now = time.monotonic()
        if now - self._fd_logged >= FD_LOG_INTERVAL:
            log.warning(
                "out of file descriptors: evicting the oldest pending handshake",
                extra={"error": errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                       "count": self._fd_exhausted, "pending": len(self.handshakes)},
            )
            self._fd_logged, self._fd_exhausted = now, 0
        time.sleep(FD_BACKOFF)

    def process_request(self, request: Any, client_address: Any) -> None:
        """TLS connections go to the handshake loop; plain ones (labs) are admitted as is."""
        if isinstance(request, ssl.SSLSocket):
            self.handshakes.add(request, client_address)
        else:
            self._start_association(request, client_address, ANONYMOUS)

    def _handshake_done(self, request: ssl.SSLSocket, client_address: Any) -> None:
        der = request.getpeercert(binary_form=True)
        trust = self.trust  # the current trust set: a handshake on an older context re-checked
        identity = trust.identify(der) if (der and trust is not None) else None
        if identity is None:
            self._refuse(client_address, "client certificate is not trusted")
            self.shutdown_request(request)
            return
        self._start_association(request, client_address, identity)

    def _start_association(
        self, request: socket.socket, client_address: Any, identity: Identity
    ) -> None:
        """Count the connection against the association limit from now on; give it its
        association thread."""
        request.settimeout(self.network_timeout)
        with self._lock:
            self._identities[request] = identity
            self._live.add(request)
        try:
            super().process_request(request, client_address)  # a thread per association
        except Exception:
            log.exception("starting an association thread failed; closing the connection")
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An exception escaped a connection's handling: log it (socketserver prints it)."""
        log.error(
            "connection handling failed", exc_info=True,
            extra={"peer": _peer(client_address)},
        )

    def server_close(self) -> None:
        if self._inherited is not None:
            # Only this process's descriptor: pynetdicom's server_close() shuts the socket
            # down first, which stops the one listening socket every worker and the
            # supervisor share (a worker whose listener died would take the others' with it,
            # and its replacement would inherit a socket that no longer listens).
            cast(socket.socket, self.socket).close()
        else:
            super().server_close()
        self.handshakes.stop()
        self._accept_wake_r.close()
        self._accept_wake_w.close()

    def listening(self) -> bool:
        """The handshake loop runs (the accept loop is the caller's thread to watch)."""
        return self.handshakes.alive()

    def _refuse(self, client_address: Any, reason: str) -> None:
        """Count, audit and log a connection closed before any DICOM; never raises (an
        audit sink that fails, e.g. on a full disk, must not take the listener down).

        Only the first refusal of a source and reason in an interval is logged here; the
        aggregator logs the rest as one count (a line each let any host grow the logs)."""
        peer = _peer(client_address)
        first = True
        if self.on_refused is not None:
            try:
                first = self.on_refused(peer, reason)
            except Exception:
                log.exception("recording a refused connection failed", extra={"peer": peer})
        if first:
            log.warning("connection refused", extra={"peer": peer, "reason": reason, "count": 1})

    def admitted_identity(self, request: socket.socket) -> Identity | None:
        with self._lock:
            return self._identities.get(request)

    def live_associations(self) -> int:
        """Associations admitted whose socket is still open and that have not ended: what
        MIMIC_MAX_ASSOCIATIONS bounds. A connection past its handshake whose A-ASSOCIATE-RQ
        is not yet admitted is not one: counted, a burst of connections over the limit saw
        each other and was rejected whole (2/3/2) on an idle server."""
        with self._lock:
            return sum(1 for s in list(self._admitted) if s.fileno() != -1)

    def take_association_slot(self, assoc: Any, limit: int,
                              count: Callable[[], int]) -> bool:
        """Claim one of the ``limit`` association slots for ``assoc`` (its A-ASSOCIATE-RQ
        being admitted); False when, claimed, ``count()`` (the admitted associations, this
        worker's or every worker's, ``assoc`` among them) is over the limit, and then the
        claim is given back. Claimed before counted: a worker's count, published to the
        others as it counts (``workers/table.py``), includes its candidate, so two workers
        admitting at once may both refuse the last slot, never both take it; within one
        process, admissions are counted one at a time."""
        request = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if request is None:
            return False
        with self._slot_lock:
            with self._lock:
                self._admitted.add(request)
            if count() <= limit:
                return True
            with self._lock:
                self._admitted.discard(request)
        return False

    def give_back_association_slot(self, assoc: Any) -> None:
        """The association claimed a slot and was then refused for another reason."""
        request = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if request is not None:
            with self._lock:
                self._admitted.discard(request)

    def apply_trust(
        self, context: ssl.SSLContext, trust: TrustIndex, abort_revoked: bool
    ) -> int:
        """Swap in a new trust set; return how many revoked associations were aborted."""
        self.trust = trust  # first: a handshake done on the old context is re-checked
        self.ssl_context = context
        if not abort_revoked:
            return 0
        return self.abort_untrusted()

    def abort_untrusted(self) -> int:
        """Abort the associations the current trust set no longer trusts (revoked, their CA
        retired, their certificate expired); return how many. Called on each trust change
        and, for the certificates a trusted CA issued, whose expiry changes no trust set,
        on every poll of the certificate watcher."""
        trust = self.trust
        if trust is None:
            return 0
        aborted = 0
        for assoc in self.active_associations:
            identity = peer_identity(assoc)
            if identity is None or identity is ANONYMOUS or trust.still_trusts(identity):
                continue
            if assoc in self._aborted_untrusted:  # by an earlier sweep: aborted, said once
                continue
            self._aborted_untrusted.add(assoc)
            log.warning(
                "aborting association of a revoked certificate",
                extra={"identity": identity.label},
            )
            assoc.abort(block=False)
            aborted += 1
        return aborted


def _peer(client_address: Any) -> str:
    try:
        return f"{client_address[0]}:{client_address[1]}"
    except (TypeError, IndexError):
        return str(client_address)
