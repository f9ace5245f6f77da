"""A PDU read by the accepting DUL (``pdata-read`` with ``pdu-length-guard``'s socket): its
body lands in the buffer that holds its header, and every outcome of pynetdicom's own
reader (the PDU and its event, a short read, an unknown type, a length over the bound) is
kept."""

from __future__ import annotations

import contextlib
import queue
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.transport import AssociationSocket

from mimic_server.net.reactor import _ReceivedPData, read_pdata, wait_for_events
from mimic_server.net.server import _GuardedAssociationSocket, guard_pdu_reads

MAX_READ = 64 * 1024


@contextlib.contextmanager
def _accepted_dul() -> Iterator[tuple[Any, socket.socket]]:
    """An acceptor's DUL, switched as the server switches it, reading from a socket pair."""
    assoc = Association(AE(), mode="acceptor")
    ours, peer = socket.socketpair()
    assoc.dul.socket = AssociationSocket(assoc, client_socket=ours)
    wait_for_events(assoc)
    read_pdata(assoc)
    guard_pdu_reads(assoc, MAX_READ)
    assert assoc.dul.event_queue.get_nowait() == "Evt5"  # the connection, as accepted
    try:
        yield assoc.dul, peer
    finally:
        peer.close()
        ours.close()


@pytest.fixture(autouse=True)
def _as_the_server_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")  # no handlers on the PDUs


@pytest.fixture
def accepted() -> Iterator[tuple[Any, socket.socket]]:
    with _accepted_dul() as dul_and_peer:
        yield dul_and_peer


class _RecordedReads:
    """A socket whose ``recv_into`` notes the buffer each read fills."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.buffers: list[Any] = []

    def recv_into(self, view: memoryview) -> int:
        self.buffers.append(view.obj)
        return self._sock.recv_into(view)


def _pdata(*values: bytes) -> bytes:
    body = b"".join(len(v).to_bytes(4, "big") + v for v in values)
    return b"\x04\x00" + len(body).to_bytes(4, "big") + body


def _events(dul: Any) -> list[str]:
    events = []
    while True:
        try:
            events.append(dul.event_queue.get_nowait())
        except queue.Empty:
            return events


def test_a_pdata_pdu_is_read_into_one_buffer_with_its_header(accepted: Any) -> None:
    dul, peer = accepted
    first, second = b"\x01\x03" + bytes(range(256)) * 100, b"\x01\x02" + b"\x08" * 4000
    pdu = _pdata(first, second)
    peer.sendall(pdu[:3])  # in pieces, as TLS records and TCP segments come
    peer.sendall(pdu[3:9000])
    peer.sendall(pdu[9000:])
    filled = _RecordedReads(dul.socket.socket)
    dul.socket.socket = filled

    dul._read_pdu_data()

    assert _events(dul) == ["Evt10"]
    read = dul._recv_pdu.get_nowait()
    assert isinstance(read, _ReceivedPData)
    assert [(context, bytes(value)) for context, value in read.pdvs] == [
        (1, first[1:]), (1, second[1:])]
    # every PDV is a view of the buffer the body was received into, not of a copy of it;
    # that buffer is the whole PDU, header included
    buffer = read.pdvs[0][1].obj
    assert all(value.obj is buffer for _, value in read.pdvs)
    assert filled.buffers[-1] is buffer
    assert bytes(buffer) == pdu
    # the same PDVs as pynetdicom's decoder gives
    theirs = P_DATA_TF()
    theirs.decode(pdu)
    assert [(i.presentation_context_id, i.presentation_data_value)
            for i in theirs.presentation_data_value_items] == [
        (context, bytes(value)) for context, value in read.pdvs]


def test_other_pdus_are_pynetdicoms_own(accepted: Any) -> None:
    dul, peer = accepted
    peer.sendall(A_RELEASE_RQ().encode())

    dul._read_pdu_data()

    assert _events(dul) == ["Evt12"]
    assert isinstance(dul._recv_pdu.get_nowait(), A_RELEASE_RQ)


def test_a_pdu_cut_short_by_the_peer_is_a_closed_connection(accepted: Any) -> None:
    dul, peer = accepted
    peer.sendall(_pdata(b"\x01\x03" + b"x" * 1000)[:500])
    peer.shutdown(socket.SHUT_WR)

    dul._read_pdu_data()

    assert _events(dul) == ["Evt17"]
    assert dul._recv_pdu.empty()


def test_a_header_cut_short_is_a_closed_connection(accepted: Any) -> None:
    dul, peer = accepted
    peer.sendall(b"\x04\x00\x00")
    peer.shutdown(socket.SHUT_WR)

    dul._read_pdu_data()

    assert _events(dul) == ["Evt17"]


def test_an_unknown_pdu_type_is_invalid_and_its_body_is_not_read(accepted: Any) -> None:
    dul, peer = accepted
    peer.sendall(b"\x09\x00\x00\x00\x00\x04abcd")

    dul._read_pdu_data()

    assert _events(dul) == ["Evt19"]
    with pytest.raises(OSError):  # the guard: nothing more is read from such a peer
        dul.socket.recv(4)


def test_a_length_over_the_bound_is_a_closed_connection_without_allocation(
    accepted: Any,
) -> None:
    dul, peer = accepted
    peer.sendall(b"\x04\x00" + (2**31).to_bytes(4, "big") + b"more")
    reads = _RecordedReads(dul.socket.socket)
    dul.socket.socket = reads

    dul._read_pdu_data()

    assert _events(dul) == ["Evt17"]
    assert [len(buffer) for buffer in reads.buffers] == [6]  # the header's read, no other


def test_each_pdu_has_a_buffer_of_its_own(accepted: Any) -> None:
    dul, peer = accepted
    first, second = _pdata(b"\x01\x03" + b"a" * 5000), _pdata(b"\x01\x02" + b"b" * 7000)
    peer.sendall(first + second)

    dul._read_pdu_data()
    dul._read_pdu_data()

    read = [dul._recv_pdu.get_nowait(), dul._recv_pdu.get_nowait()]
    assert read[0].pdvs[0][1].obj is not read[1].pdvs[0][1].obj
    assert bytes(read[0].pdvs[0][1]) == b"\x03" + b"a" * 5000
    assert bytes(read[1].pdvs[0][1]) == b"\x02" + b"b" * 7000


#: An A-ABORT PDU (service-provider initiated, no reason given).
A_ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00"
#: Byte streams a peer may send, each with the number of PDUs the DUL reads from it and
#: whether the peer then stops sending (closes its side).
PEER_STREAMS = {
    "a P-DATA-TF": (_pdata(b"\x01\x03" + b"c" * 3000), 1, False),
    "an empty P-DATA-TF, then another": (_pdata() + _pdata(b"\x01\x03x"), 2, False),
    "an A-ASSOCIATE-RQ": (A_ASSOCIATE_RQ().encode(), 1, False),
    "an A-RELEASE-RQ then an A-ABORT": (A_RELEASE_RQ().encode() + A_ABORT, 2, False),
    "a P-DATA-TF whose PDV has no context ID": (_pdata(b""), 1, False),
    "a P-DATA-TF whose PDV runs past it": (b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x09\x01\x03",
                                             1, False),
    "an A-RELEASE-RQ of the wrong length": (b"\x05\x00\x00\x00\x00\x02\x00\x00", 1, False),
    "an unknown PDU type": (b"\x0a\x00\x00\x00\x00\x02ab", 2, False),
    "a header cut short": (b"\x04\x00\x00", 1, True),
    "a body cut short": (_pdata(b"\x01\x03" + b"d" * 900)[:300], 1, True),
    "nothing": (b"", 1, True),
    "a length over the bound": (b"\x04\x00" + (MAX_READ + 1).to_bytes(4, "big"), 1, False),
}


def _read(dul: Any, peer: socket.socket, stream: bytes, reads: int, close: bool,
          reader: Any) -> list[Any]:
    """What a reader makes of ``stream``: events, PDUs, the socket's state after each."""
    peer.sendall(stream)
    if close:
        peer.shutdown(socket.SHUT_WR)
    seen: list[Any] = []
    for _ in range(reads):
        try:
            reader(dul)
        except Exception as exc:  # the reactor's catch-all would abort: the same for both
            seen.append(type(exc).__name__)
        pdus = []
        while not dul._recv_pdu.empty():
            pdu = dul._recv_pdu.get_nowait()
            pdus.append([(c, bytes(v)) for c, v in pdu.pdvs] if isinstance(pdu, _ReceivedPData)
                        else (type(pdu).__name__, pdu.encode()))
        sock = dul.socket
        seen.append((_events(dul), pdus, sock._in_body, sock._headers_read, sock._garbage,
                     sock._close_after_send))
    return seen


@pytest.mark.parametrize("name", list(PEER_STREAMS))
def test_every_outcome_is_pynetdicoms_readers(name: str) -> None:
    """The reader gives what pynetdicom's own ``_read_pdu_data`` gives on the same socket:
    the same events and PDUs, and the guarded socket left in the same state."""
    stream, reads, close = PEER_STREAMS[name]
    with _accepted_dul() as (dul, peer):
        ours = _read(dul, peer, stream, reads, close, type(dul)._read_pdu_data)
    with _accepted_dul() as (dul, peer):
        theirs = _read(dul, peer, stream, reads, close, DULServiceProvider._read_pdu_data)
    assert ours == theirs


def test_a_body_that_stops_coming_is_a_closed_connection_as_in_pynetdicom() -> None:
    outcomes = []
    for reader in (None, DULServiceProvider._read_pdu_data):
        with _accepted_dul() as (dul, peer):
            dul.socket.socket.settimeout(0.2)
            peer.sendall(_pdata(b"\x01\x03" + b"e" * 900)[:300])  # and nothing more, open
            (reader or type(dul)._read_pdu_data)(dul)
            outcomes.append((_events(dul), dul._recv_pdu.empty(), dul.socket._in_body))
    assert outcomes[0] == outcomes[1] == (["Evt17"], True, True)


def test_a_body_is_read_only_after_its_header(accepted: Any) -> None:
    dul, _ = accepted
    assert isinstance(dul.socket, _GuardedAssociationSocket)
    with pytest.raises(RuntimeError):
        dul.socket.recv_after_header(bytearray(b"\x04\x00\x00\x00\x00\x02"), 2)


def test_with_pdata_read_off_pynetdicoms_reader_runs(accepted: Any) -> None:
    dul, peer = accepted
    dul._read_pdata = False
    pdu = _pdata(b"\x01\x03" + b"y" * 3000)
    peer.sendall(pdu)

    dul._read_pdu_data()

    assert _events(dul) == ["Evt10"]
    theirs = dul._recv_pdu.get_nowait()
    assert isinstance(theirs, P_DATA_TF)
    assert theirs.presentation_data_value_items[0].presentation_data_value == b"\x03" + b"y" * 3000
