"""Event-driven waits for pynetdicom's two threads of an accepted association.

pynetdicom polls: its DUL thread (socket reader and writer) sleeps 1 ms whenever a turn of
its loop found nothing to do, and its association thread sleeps 1 ms before each
non-blocking look at its message queue. An association that transfers nothing still costs
about two thousand thread wake-ups a second; ten idle TLS associations took a quarter of a
core. Here, for accepted associations only, each thread blocks until there is something to
do, or until the next deadline it must check:

* the DUL thread blocks in ``poll`` on its socket and on a wake-up (an ``eventfd``) written
  whenever a primitive is put on its outgoing queue or it is told to stop, with a timeout
  equal to the ARTIM timer's remaining time. A TLS socket may hold data already decrypted
  (``SSLSocket.pending``) that ``poll`` cannot see: the wait then returns at once.
* the association thread waits on a bell rung whenever the DUL puts a DIMSE message on its
  message queue or a primitive (A-RELEASE, A-ABORT, A-P-ABORT) on its queue to the user,
  and when the DUL thread ends; its timeout is the network (idle) timer's remaining time.
  While it waits it counts as paused (``_is_paused``), as pynetdicom's loop does while
  waiting on ``_reactor_checkpoint``, so another thread's ``release()`` or ``send_*`` need
  not wait for the wait to end; after waking it waits on the checkpoint before it takes a
  message.

The DUL thread's look at its socket on each turn (pynetdicom: a ``select`` with no timeout,
also on the turn right after every state machine action) becomes the result of its last
``poll``: a turn that finds nothing to do waits (polls) before the next anyway.

Each wait is also bounded by :data:`LONGEST_WAIT`, so a wake-up source missed in some corner
costs at most that delay, never a hang. Every state either loop checks has a wake-up of its
own (the DUL thread's: its socket, its outgoing queue, ``_kill_thread``, the ARTIM timer; the
association thread's: its message queue, its queue to the user, the DUL thread's end, the
network timer; its ``_kill`` is only set with the DUL stopped, whose end rings), so the net is
long: at 0.5 s, ten idle associations' forty safety-net wake-ups a second were half of an
idle server's CPU. Only *how* a thread waits changes, never what it does
on waking: the loops run pynetdicom's own turns (state machine events, timers, release and
abort handling), and the fence (``mimic_server/patches.py``) applies this only where those
are the verified ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import select
import ssl
import struct
import threading
import types
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import LOGGER as ASSOCIATION_LOGGER
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import LOGGER, DULServiceProvider
from pynetdicom.fsm import InvalidEventError
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.utils import make_target

from mimic_server.logs import where
from mimic_server.net.server import PDU_TYPES
from mimic_server.security.identity import peer_identity

log = logging.getLogger(__name__)

#: The state machine's events for a primitive the association thread put on the DUL's queue
#: (A-ASSOCIATE response accept and reject, P-DATA, A-RELEASE request and response,
#: A-ABORT).
_USER_PRIMITIVE_EVENTS = frozenset({"Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"})

#: Longest single wait of either thread (seconds): a safety net, not a poll (each wake-up of
#: an idle thread costs ~0.1 ms of CPU here, GIL hand-offs included).
LONGEST_WAIT = 10.0
#: Added to a timer's remaining time so that the wake-up finds it expired, not just short.
_TIMER_SLACK = 0.001
_POLL_IN = select.POLLIN | select.POLLPRI


def _until(remaining: float) -> float:
    """A wait for a timer with ``remaining`` seconds: its expiry, at most LONGEST_WAIT."""
    return min(LONGEST_WAIT, max(0.0, remaining) + _TIMER_SLACK)


class _RingingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that rings a bell after each put (class swap of one of pynetdicom's)."""

    _ring: Callable[[], None]

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._ring()


def _ring_on_put(q: queue.Queue, ring: Callable[[], None]) -> None:  # type: ignore[type-arg]
    q.__class__ = _RingingQueue
    cast(_RingingQueue, q)._ring = ring


class _WakeUp:
    """An ``eventfd`` the DUL thread polls beside its socket; rung from any thread.

    Closed when the DUL thread ends; a ring after that is ignored (the lock keeps a late
    ring from writing to a number the kernel may have handed to another file).
    """

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()
        self._closed = False

    def ring(self) -> None:
        with self._lock:
            if not self._closed:
                # BlockingIOError: the counter is saturated, the DUL is woken anyway
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_write(self.fd, 1)

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.fd)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.fd)

    def __del__(self) -> None:  # a DUL thread that never started
        self.close()


_P_DATA_TF = 0x04
_A_ASSOCIATE_RQ = 0x01
#: pynetdicom's message for a field of an A-ASSOCIATE-RQ it refuses to decode (``set_ae``,
#: the AE title setters, ``set_uid``): the field's name, without the value it quotes.
_INVALID_FIELD = re.compile(r"Invalid '([^']{1,64})' value")


def _not_understood(exc: Exception) -> str | None:
    """What of an A-ASSOCIATE-RQ pynetdicom could not decode or convert, in words that quote
    no value; None for an exception that is not one of its refusals of a peer's value."""
    if isinstance(exc, ValueError):
        text = str(exc)
        found = _INVALID_FIELD.match(text)
        if found:
            return f"invalid {found.group(1)}"
        if isinstance(exc, UnicodeDecodeError) or text.startswith("Unable to decode"):
            return "a title or UID that is not ASCII text"  # pynetdicom's decode_bytes
        if text.startswith("'context_id' must be an odd integer"):
            return "a presentation context ID that is not odd"  # PresentationContext
        if text.startswith("User Identity Type must be"):
            return "a user identity type other than 1 to 5"  # UserIdentityNegotiation
    if isinstance(exc, struct.error):
        return "an item shorter than its fields"
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], int):
        return f"an item of unknown type 0x{exc.args[0]:02X}"  # pynetdicom's PDU_ITEM_TYPES
    return None


def _request_not_understood(assoc: Any, reason: str) -> None:
    """Say why a peer's A-ASSOCIATE-RQ is answered A-ABORT; never raises.

    The request of a peer whose certificate was trusted, decoded by pynetdicom, raises on a
    Calling or Called AE Title that is empty, padded with NULs or holds a character outside
    the AE repertoire (a backslash, an accented letter), and on an item type it does not
    know. pynetdicom's state machine answers A-ABORT (AA-1), and its own log line is off:
    the modality's operator saw "aborted by the service user" and the archive's log said
    nothing at all, not even that the modality had called. A request that decodes but whose
    conversion to pynetdicom's primitive raises on a peer's value (a presentation context ID
    that is even, a user identity type outside 1 to 5) is said the same way, not as an
    unexpected error of the archive (:meth:`_EventDrivenDUL._abort_for`)."""
    try:
        identity = peer_identity(assoc)
        requestor = assoc.requestor
        log.warning(
            "association request not understood: aborted",
            extra={"peer": f"{requestor.address}:{requestor.port}",
                   "identity": identity.label if identity is not None else "unknown",
                   "reason": reason},
        )
    except Exception:  # a log line must not change what the peer is answered
        log.debug("the refused association request could not be described", exc_info=True)


class _ReceivedPData:
    """A P-DATA-TF PDU as :meth:`_EventDrivenDUL._decode_pdu` reads it: its PDVs as
    (presentation context ID, a view of the PDU's bytes), for ``to_primitive``, the one use
    pynetdicom's state machine makes of a received P-DATA-TF."""

    __slots__ = ("pdvs",)

    def __init__(self, pdvs: list[tuple[int, memoryview]]) -> None:
        self.pdvs = pdvs

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        # extended, as P_DATA_TF.to_primitive appends: the list's setter wants lists
        primitive.presentation_data_value_list.extend(self.pdvs)  # type: ignore[arg-type]
        return primitive


def _pdata_items(pdu: bytearray) -> list[tuple[int, memoryview]] | None:
    """The PDVs of a whole P-DATA-TF PDU (header included), or None where pynetdicom's
    decoder would fail (an item shorter than its context ID, or running past the PDU)."""
    view = memoryview(pdu)
    pdvs: list[tuple[int, memoryview]] = []
    offset, end = 6, len(pdu)
    while offset < end:
        if end - offset < 5:
            return None
        length = int.from_bytes(view[offset : offset + 4], "big")
        if length < 1 or offset + 4 + length > end:
            return None
        pdvs.append((view[offset + 4], view[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return pdvs


class _EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL reactor, blocking between turns instead of sleeping 1 ms."""

    _wake_up: _WakeUp
    _assoc_bell: threading.Event
    _poller: Any
    _polled_fd = -1
    _reactor_ended = False
    #: The last wait saw the socket readable (or TLS data already decrypted): the next look
    #: at the transport reads, without pynetdicom's own ``select`` on the socket.
    _readable = False
    #: P-DATA-TF PDUs read here, not by pynetdicom's PDU classes (the fence's ``pdata-read``).
    _read_pdata = False

    @property  # type: ignore[override]
    def _kill_thread(self) -> bool:
        return bool(self.__dict__.get("_kill_thread", False))

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self.__dict__["_kill_thread"] = value  # set by kill_dul / stop_dul from any thread
        if value:
            self._wake_up.ring()

    def send_pdu(self, primitive: Any) -> None:
        """pynetdicom's, after the network timer is restarted: the peer's silence is
        counted from the last PDU either side sent, not only from the last one it sent.

        pynetdicom restarts the timer only when a PDU arrives, and the association thread
        looks at it after each request it served: a request whose handling outlasted
        ``MIMIC_NETWORK_TIMEOUT`` while the peer waited, silent as it should be, for the
        answer (a large object's put to a slow Blob Storage; a C-MOVE, whose requestor sends
        nothing while the sub-operations run) had its association aborted right after the
        answer was queued ("Network timeout reached"). Called in the thread that sends (the
        association thread, for a response), so the look that follows sees the restart. A
        peer that stops reading is still dropped, by the socket's own deadline on each send
        (``net/server.py``)."""
        self._idle_timer.restart()
        super().send_pdu(primitive)

    def _wait_for_work(self) -> None:
        """Block until the socket is readable, a primitive is queued to send, the thread is
        told to stop, or the ARTIM timer is due (pynetdicom: ``time.sleep(0.001)``)."""
        if self._kill_thread or self.to_provider_queue.qsize():
            return
        fd = -1
        transport = self.socket
        sock = transport.socket if transport is not None else None
        if sock is not None and getattr(transport, "_is_connected", False):
            try:
                if isinstance(sock, ssl.SSLSocket) and sock.pending():
                    self._readable = True
                    return  # decrypted already: poll would not see it
                fd = sock.fileno()
            except (OSError, ValueError):
                return  # closed under us: let the turn see it
        if fd != self._polled_fd:
            if self._polled_fd != -1:
                self._poller.unregister(self._polled_fd)
            if fd != -1:
                self._poller.register(fd, _POLL_IN)
            self._polled_fd = fd
        for ready_fd, _ in self._poller.poll(_until(self.artim_timer.remaining) * 1000):
            if ready_fd == fd:
                self._readable = True
        self._wake_up.drain()

    def _is_transport_event(self) -> bool:
        """pynetdicom's look at the transport, whose ``select`` (a system call on every turn
        of the loop, also right after each state machine action) is left to the next wait:
        that ``poll`` on the socket runs anyway before the reactor sleeps, and says whether
        there is a PDU to read. In Sta13 (waiting for the close) pynetdicom's own runs."""
        if self.state_machine.current_state == "Sta13":
            return super()._is_transport_event()
        if not self._readable:
            return False
        self._readable = False
        transport = self.socket
        if transport is None or not getattr(transport, "_is_connected", False):
            return False  # as pynetdicom's ready: nothing to read from a closed transport
        self._read_pdu_data()
        return True

    def _read_pdu_data(self) -> None:
        """pynetdicom 3.0.4's ``DULServiceProvider._read_pdu_data``, line for line, but for
        the PDU's body, which the guarded socket (``recv_after_header``) reads into the
        buffer that holds the header: pynetdicom appends the body it read to the header, a
        copy of every byte received, 0.5 MB for a large CT image. With pynetdicom's socket
        (``pdu-length-guard`` not applied) or ``pdata-read`` off: pynetdicom's own."""
        transport = self.socket
        read_body = getattr(transport, "recv_after_header", None)
        if not self._read_pdata or read_body is None:
            super()._read_pdu_data()
            return
        assert transport is not None
        try:
            header = transport.recv(6)
        except (OSError, TimeoutError) as exc:
            LOGGER.error("Connection closed before the entire PDU was received")
            LOGGER.exception(exc)
            self.event_queue.put("Evt17")
            return
        try:
            pdu_type, _, pdu_length = struct.unpack(">BBL", header)
        except struct.error:
            self.event_queue.put("Evt17")
            return
        if pdu_type not in PDU_TYPES:
            LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        try:
            bytestream = read_body(header, pdu_length)
        except (OSError, TimeoutError) as exc:
            LOGGER.error("Connection closed before the entire PDU was received")
            LOGGER.exception(exc)
            self.event_queue.put("Evt17")
            return
        if len(bytestream) != 6 + pdu_length:
            LOGGER.error(
                f"The received PDU is shorter than expected ({len(bytestream)} of "
                f"{6 + pdu_length} bytes received)"
            )
            self.event_queue.put("Evt17")
            return
        try:
            pdu, event = self._decode_pdu(bytestream)
            self.event_queue.put(event)
        except Exception as exc:
            LOGGER.error("Unable to decode the received PDU data")
            LOGGER.exception(exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        """pynetdicom's, but a P-DATA-TF's PDVs are views of the PDU as read, not copied three
        times over through its generic item decoders (a copy of the PDU, a
        ``PresentationDataValueItem`` per PDV, each value sliced out). Anything else, a
        malformed P-DATA-TF, or handlers bound to the raw-data and PDU events (which expect
        ``bytes`` and a ``P_DATA_TF``): pynetdicom's own, which also raises as before."""
        if self._read_pdata and bytestream[0] == _P_DATA_TF:
            assoc = self.assoc
            if not assoc.get_handlers(evt.EVT_DATA_RECV) and not assoc.get_handlers(
                evt.EVT_PDU_RECV
            ):
                pdvs = _pdata_items(bytestream)
                if pdvs is not None:
                    return _ReceivedPData(pdvs), "Evt10"
        if bytestream[0] == _A_ASSOCIATE_RQ:
            try:
                return super()._decode_pdu(bytestream)
            except Exception as exc:
                _request_not_understood(self.assoc, _not_understood(exc) or type(exc).__name__)
                raise  # pynetdicom's reader: Evt19, answered A-ABORT (AA-1)
        return super()._decode_pdu(bytestream)

    def run_reactor(self) -> None:
        """pynetdicom 3.0.4's ``DULServiceProvider.run_reactor``, with its idle sleep
        replaced by :meth:`_wait_for_work`; rings the association's bell when it ends."""
        try:
            self._run_reactor_turns()
        finally:
            self._wake_up.close()
            self._reactor_ended = True
            self._assoc_bell.set()

    def _run_reactor_turns(self) -> None:
        # From here to the end: pynetdicom's loop, line for line, but for the wait and the
        # guard around the state machine's action (``_abort_for``).
        self._idle_timer.start()
        self.socket = cast(Any, self.socket)
        sleep = False

        while True:
            # Let the assoc reactor off the leash
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True

            if sleep:
                self._wait_for_work()

            if self._kill_thread:
                break

            # Check the ARTIM timer first so its event is placed on the queue
            #   ahead of any other events this loop
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            try:
                if self._process_recv_primitive():  # encode (sent by state machine)
                    pass
                elif self._is_transport_event():  # receive and decode PDU
                    self._idle_timer.restart()
            except Exception as exc:
                LOGGER.error("Exception in DUL.run(), aborting association")
                LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return

            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue

            try:
                self.state_machine.do_action(event)
            except InvalidEventError as exc:
                # Not in pynetdicom's loop (nor the next ``except``), whose thread died here
                # with a traceback on stderr, the peer's connection dropped.
                if not self._late_primitive(event):
                    self._abort_for(exc)
                    return
            except Exception as exc:
                self._abort_for(exc, request=event == "Evt6")
                return
            sleep = False

    def _late_primitive(self, event: str) -> bool:
        """Whether an event invalid in the current state is a primitive the association
        thread queued before the association ended here (a C-FIND's next response after
        this side's A-ABORT for a PDU it could not decode, say: Sta13, or Sta1 once the
        connection closed; or the answer to an A-ASSOCIATE-RQ whose requestor sent an
        A-RELEASE-RQ or A-ABORT, or closed, before it was answered): dropped, logged at
        DEBUG, the loop goes on (and closes the connection, in Sta13, as pynetdicom does)."""
        if event not in _USER_PRIMITIVE_EVENTS or self.state_machine.current_state not in (
                "Sta13", "Sta1"):
            return False
        with contextlib.suppress(queue.Empty):
            self.to_provider_queue.get(False)  # the primitive; wakes a sender waiting for room
        log.debug("a primitive after the association ended, dropped",
                  extra={"event": event, "state": self.state_machine.current_state})
        return True

    def _abort_for(self, exc: Exception, request: bool = False) -> None:
        """An action of the state machine raised (a bug, most likely, or a PDU that some
        decoder let through): one ERROR record naming the exception's type and where it
        was raised, never its message (it may quote values); then as pynetdicom does for an
        exception in its transport, A-ABORT (source 2, service provider) and the association
        killed, and the connection closed as pynetdicom's AA-2 closes it (``EVT_CONN_CLOSE``:
        a partly received data set's spool goes, a slot is given back).

        ``request``: the action was the one taking in the peer's A-ASSOCIATE-RQ (AE-6); an
        exception there that is pynetdicom refusing one of the peer's values is the peer's
        error, said at WARNING (:func:`_request_not_understood`), not this side's."""
        reason = _not_understood(exc) if request else None
        if reason is not None:
            _request_not_understood(self.assoc, reason)
        else:
            log.error("unexpected error in the DICOM upper layer: aborting the association",
                      extra={"error": type(exc).__name__, "where": where(exc)})
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        transport = self.socket
        with contextlib.suppress(Exception):  # the connection may be gone
            transport.send(abort_pdu.encode())  # type: ignore[union-attr]
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True
        self.artim_timer.stop()
        with contextlib.suppress(Exception):
            transport.close()  # type: ignore[union-attr]
        self.assoc.dimse.msg_queue.put((None, None))  # a service waiting: no response
        remote = self.assoc.requestor if self.assoc.is_acceptor else self.assoc.acceptor
        address = getattr(remote.address_info, "as_tuple", None)
        evt.trigger(self.assoc, evt.EVT_CONN_CLOSE, {"address": address})  # never raises


class _BellDIMSE(DIMSEServiceProvider):
    """The association thread's look at its message queue, as a wait on its bell."""

    _bell: threading.Event

    def get_msg(self, block: bool = False) -> Any:
        if block:  # a service's own wait for a response: pynetdicom's
            return super().get_msg(block=True)
        # The reactor's poll (pynetdicom: a 1 ms sleep, then a non-blocking look). It checks
        # release, abort, the DUL thread and the network timer after this returns.
        assoc = self.assoc
        if self.msg_queue.empty():
            assoc._is_paused = True
            try:
                self._bell.wait(_until(assoc.dul._idle_timer.remaining))
                assoc._reactor_checkpoint.wait()  # another thread may be messaging
            finally:
                assoc._is_paused = False
        self._bell.clear()  # before the checks that follow: a later ring wakes the next wait
        dul = assoc.dul
        if getattr(dul, "_reactor_ended", False):
            dul.join(LONGEST_WAIT)  # its loop is over: let the reactor see it no longer alive
        try:
            return self.msg_queue.get_nowait()
        except queue.Empty:
            return None, None


def read_pdata(assoc: Any) -> None:
    """Let a new acceptor association's DUL (already an :class:`_EventDrivenDUL`) read
    P-DATA-TF PDUs itself; applied, or not, by the fence (``pdata-read``)."""
    if isinstance(assoc.dul, _EventDrivenDUL):
        assoc.dul._read_pdata = True


def run_without_sleep(assoc: Any) -> None:
    """Have a new acceptor association's thread run :func:`_run_acceptor_turns`, not
    pynetdicom's loop; applied, or not, by the fence (``acceptor-loop``), only where
    ``idle-waits`` made the loop's look at its message queue a wait on the bell."""
    if isinstance(assoc.dimse, _BellDIMSE):
        assoc._run_reactor = types.MethodType(_run_acceptor_turns, assoc)


def _run_acceptor_turns(self: Any) -> None:
    """pynetdicom 3.0.4's ``Association._run_reactor`` (the acceptor's loop), line for line,
    without the ``time.sleep(0.001)`` at the top of every turn.

    That sleep kept pynetdicom's loop from spinning on its non-blocking look at the message
    queue. With ``idle-waits`` the look is a wait on the bell (:class:`_BellDIMSE`), so the
    sleep only delayed a request that arrived within 1 ms of the last response: with a
    sender that answers fast (``storescu`` loads and sends the next object in about half a
    millisecond) every C-STORE waited for the rest of it, a fifth of a small object's cycle
    over one association, and every C-ECHO about 0.8 ms (``docs/benchmarks.md``). The loop
    cannot spin without it: each turn's wait ends on a message, on a primitive for the
    association (A-RELEASE, A-ABORT), on the DUL thread's end, on the network timer or after
    ``LONGEST_WAIT``, and the bell is cleared before each look.
    """
    self._is_paused = False
    while not self._kill:
        # (pynetdicom sleeps 1 ms here)

        # A race condition may occur if the Acceptor uses the send_*()
        #   methods as the received DIMSE message may be taken off the
        #   queue before the send_*() method gets to it, so we allow
        #   the reactor to be paused
        # We also need to be careful that the reactor actually stops
        #   before attempting DIMSE or ACSE messaging
        # Will block until `_reactor_checkpoint` is set()
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False

        # Check with the DIMSE provider to see if a completely decoded
        #   message is available
        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, cast(int, context_id))

        # Check for release request from the peer
        if self.is_established and self.acse.is_release_requested():
            # Send A-RELEASE response
            self.acse.send_release(is_response=True)
            ASSOCIATION_LOGGER.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        # Check for abort from either locally or the peer
        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            ASSOCIATION_LOGGER.info(log_msg)
            # Ensure that EVT_ASCE_RECV fires for subscribers
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        # Check if the DULServiceProvider thread is still running
        #   DUL.is_alive() is inherited from threading.thread
        if not self.dul.is_alive():
            self.kill()
            return

        # Check if network_timeout has expired
        if self.dul.idle_timer_expired():
            ASSOCIATION_LOGGER.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()

            self.kill()
            return


def simple_dul_queues(assoc: Any) -> None:
    """Give a new (not yet started) acceptor association's DUL a ``queue.SimpleQueue`` for its
    state machine events and for the PDUs it has read, keeping what they hold (the accepted
    connection's Evt5). Applied, or not, by the fence (``dul-queues``).

    Every PDU goes through both queues, a put and a get each, and every turn of the reactor
    that finds no event asks the event queue and gets ``queue.Empty``. ``queue.Queue`` does
    each in Python, under a lock and a condition; ``SimpleQueue`` is the same FIFO in C, and
    these two queues are only ever put to and taken from (``put``, ``get(False)``), never
    joined, peeked at or bounded: the fence checks every pynetdicom function that uses them.
    """
    dul = assoc.dul
    for name in ("event_queue", "_recv_pdu"):
        held = getattr(dul, name)
        simple: queue.SimpleQueue[Any] = queue.SimpleQueue()
        while True:
            try:
                simple.put(held.get_nowait())
            except queue.Empty:
                break
        setattr(dul, name, simple)


def wait_for_events(assoc: Any) -> None:
    """Switch a new (not yet started) acceptor association's DUL and DIMSE providers to
    blocking waits. Applied, or not, by the fence (``mimic_server/patches.py``), which checks
    first that the pynetdicom code they replace and rely on is the verified one."""
    bell = threading.Event()
    dul = assoc.dul
    wake_up = _WakeUp()
    dul._wake_up = wake_up  # before the class swap: its _kill_thread setter rings it
    dul._assoc_bell = bell
    dul._poller = select.poll()
    dul._poller.register(wake_up.fd, _POLL_IN)
    dul.__class__ = _EventDrivenDUL
    # The thread's target was bound to pynetdicom's run_reactor in DULServiceProvider.__init__
    # (``Thread.__init__(self, target=make_target(self.run_reactor))``): bind it again, the
    # same way, to the run_reactor of the class the DUL now has.
    dul._target = make_target(dul.run_reactor)
    _ring_on_put(dul.to_provider_queue, wake_up.ring)
    _ring_on_put(dul.to_user_queue, bell.set)
    dimse = assoc.dimse
    dimse.__class__ = _BellDIMSE
    dimse._bell = bell
    _ring_on_put(dimse.msg_queue, bell.set)

