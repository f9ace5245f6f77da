"""Why a C-MOVE's sub-association was not established, for the operator's log line.

pynetdicom answers every failure to establish it the same way (0xA801, made 0xA702 by
``move_answer``) and logs the cause only to its own logger, which MIMIC silences. The cause is
read from what the attempt shows: the events pynetdicom fires on the sub-association (bound
through ``AE.associate(evt_handlers=)``: ``EVT_CONN_OPEN``, ``EVT_REJECTED``,
``EVT_ACCEPTED``, ``EVT_ACSE_RECV``) and, for a TLS destination, the handshake's error, seen
by the socket the client context wraps (:meth:`Attempt.tls`). None of it carries patient
data: A-ASSOCIATE-RJ codes, the ssl library's reason, the socket's error text.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from pynetdicom import evt
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT

if TYPE_CHECKING:
    from pynetdicom.events import Event

#: Whether :meth:`Attempt.tls` wraps the context (the fence's ``sub-association-cause``:
#: pynetdicom's ``AssociationSocket.connect`` as verified); else the context goes as it is.
noting = False


class Attempt:
    """One C-MOVE's attempt to associate with its destination."""

    def __init__(self) -> None:
        self.connected = False
        self.connect_error: str | None = None
        self.rejected: str | None = None
        self.no_context = False
        self.aborted_by_peer = False

    @property
    def cause(self) -> str:
        """Why the sub-association was not established, as far as the attempt showed."""
        if not self.connected:
            return self.connect_error or "no TCP connection (refused, timed out or unreachable)"
        if self.rejected is not None:
            return self.rejected
        if self.no_context:
            return "no presentation context accepted"
        if self.aborted_by_peer:
            return "A-ABORT from the destination during association negotiation"
        return "no A-ASSOCIATE response within the ACSE timeout"

    def handlers(self) -> list[tuple[Any, Any]]:
        """The ``evt_handlers`` that watch the attempt (notification events only)."""
        return [
            (evt.EVT_CONN_OPEN, self._opened),
            (evt.EVT_REJECTED, self._rejected),
            (evt.EVT_ACCEPTED, self._accepted),
            (evt.EVT_ACSE_RECV, self._received),
        ]

    def tls(self, context: ssl.SSLContext, server_name: str) -> tuple[Any, str]:
        """``tls_args`` whose socket notes why its connection (TCP, then the handshake)
        failed: pynetdicom catches that error and keeps it to its own logger. The context
        itself where the fence did not verify how pynetdicom uses it (``noting``)."""
        return (_NotingContext(context, self) if noting else context), server_name

    def _opened(self, event: Event) -> None:
        self.connected = True

    def _rejected(self, event: Event) -> None:
        rj = event.assoc.acceptor.primitive
        self.rejected = (
            f"A-ASSOCIATE-RJ {rj.result}/{rj.result_source}/{rj.diagnostic} "
            f"({rj.result_str}, {rj.source_str}: {rj.reason_str})"
        )

    def _accepted(self, event: Event) -> None:
        self.no_context = not event.assoc.accepted_contexts

    def _received(self, event: Event) -> None:
        if isinstance(event.primitive, A_ABORT | A_P_ABORT):
            self.aborted_by_peer = True

    def note_connect_error(self, exc: OSError, tcp_connected: bool = True) -> None:
        """Note why a TLS destination's connection failed. A TCP connection that never
        came up says ``no TCP connection (...)``, as a plain-TCP destination's does (the
        operator guide's cause), not the socket's bare ``Connection refused``."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            self.connect_error = f"TLS: {exc.verify_message or exc.reason}"
        elif isinstance(exc, ssl.SSLError):
            self.connect_error = f"TLS: {exc.reason or type(exc).__name__}"
        elif not tcp_connected:
            self.connect_error = f"no TCP connection ({exc.strerror or type(exc).__name__})"
        else:
            self.connect_error = exc.strerror or type(exc).__name__


class _NotingContext:
    """A client context as pynetdicom uses it (``wrap_socket``, then ``connect`` on the
    socket it returns): the socket's connect notes its error on the attempt. Anything else
    pynetdicom would ask of the context is the context's own."""

    def __init__(self, context: ssl.SSLContext, attempt: Attempt) -> None:
        self._context, self._attempt = context, attempt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        wrapped = self._context.wrap_socket(sock, *args, **kwargs)
        connect, attempt = wrapped.connect, self._attempt

        def noting_connect(address: Any) -> None:
            try:
                connect(address)
            except OSError as exc:
                attempt.note_connect_error(exc, _tcp_connected(wrapped, exc))
                raise

        wrapped.connect = noting_connect  # type: ignore[method-assign]
        return wrapped


def _tcp_connected(sock: ssl.SSLSocket, exc: OSError) -> bool:
    """Whether the TCP connection came up before the error (then it failed in the TLS
    handshake): a socket never connected has no peer. A reset or a close has no peer left
    either, but only a connection that was up can be reset."""
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return True
    try:
        sock.getpeername()
    except OSError:
        return False
    return True
