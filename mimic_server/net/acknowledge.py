"""Reads that acknowledge at once what has arrived of a PDU (Linux's TCP_QUICKACK).

A peer with Nagle's algorithm on (dcmtk without ``TCP_NODELAY=1``, as many modalities,
workstations and archives run) writes a message in several calls and holds back the last,
short segment until everything before it is acknowledged. Linux delays that acknowledgement
by up to 40 ms while it waits for data of its own to send with it, so each message costs
some 40 ms: dcmtk ``storescu`` sent 100 CT slices over TLS to MIMIC in 4.8 s, and 0.35-0.41 s
with ``TCP_NODELAY=1`` or with these reads. TCP_QUICKACK does not stay set (the kernel
returns to delayed acknowledgements by its own rules), so it is set before every read of a
PDU: about 0.4 us each.

The acceptor's reads (``net/server._GuardedAssociationSocket``) call :func:`acknowledging`
themselves; a C-MOVE sub-association's socket becomes an :class:`AcknowledgingSocket`
(the fence's ``requestor-acks``), so that a destination's C-STORE-RSP is not held back.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from pynetdicom.transport import AssociationSocket

#: Linux's TCP_QUICKACK (None elsewhere, where nothing is done).
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def acknowledging(sock: socket.socket) -> Callable[[], None]:
    """What each read of a PDU from ``sock`` calls first: the bytes that have arrived are
    acknowledged as they are read, not after the kernel's delayed-ACK timer."""
    if QUICKACK is None:
        return _nothing

    setsockopt, level = sock.setsockopt, socket.IPPROTO_TCP

    def acknowledge() -> None:
        # try, not contextlib.suppress: three calls fewer before each read (some forty for
        # a 0.5 MB data set over TLS): 0.3 against 0.6 us
        try:  # noqa: SIM105
            setsockopt(level, QUICKACK, 1)
        except OSError:  # not TCP (a socket pair in tests), or closed
            pass

    return acknowledge


def _nothing() -> None:
    pass


class AcknowledgingSocket(AssociationSocket):
    """pynetdicom's transport, whose reads (a PDU's header, then its body) acknowledge
    first. Its reads are pynetdicom's own (``AssociationSocket.recv``, pinned by the fence)."""

    def recv(self, nr_bytes: int) -> bytearray:
        if self.socket is not None:
            acknowledging(self.socket)()
        return super().recv(nr_bytes)


def acknowledge_reads(assoc: Any) -> None:
    """Make an established requestor association's transport an
    :class:`AcknowledgingSocket` (applied before its DUL reads its first PDU from the peer
    after the A-ASSOCIATE-AC: from ``EVT_ESTABLISHED``)."""
    transport = assoc.dul.socket
    if type(transport) is AssociationSocket:
        transport.__class__ = AcknowledgingSocket
