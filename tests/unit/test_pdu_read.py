"""A PDU read by the accepting DUL (``pdata-read`` with ``pdu-length-guard``'s socket): its
body lands in the buffer that holds its header, and every outcome of pynetdicom's own
reader (the PDU and its event, a short read, an unknown type, a length over the bound) is
kept, over plain TCP and over TLS, with the DUL's queues the server gives it (``dul-queues``)."""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.transport import AssociationSocket

from mimic_server.certs import devpki
from mimic_server.net.acknowledge import AcknowledgingSocket, acknowledge_reads
from mimic_server.net.reactor import (
    _ReceivedPData,
    read_pdata,
    simple_dul_queues,
    wait_for_events,
)
from mimic_server.net.server import _GuardedAssociationSocket, guard_pdu_reads

MAX_READ = 64 * 1024
#: The transports every reader test runs over.
TRANSPORTS = ("tcp", "tls")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> devpki.DevPki:
    return devpki.init(tmp_path_factory.mktemp("pki"), first_client=False)


def _socket_pair(pki: devpki.DevPki | None) -> tuple[socket.socket, socket.socket]:
    """(ours, the peer's): connected, and over TLS when ``pki`` is given (the handshake
    done; the peer verifies the server's certificate with the development CA)."""
    ours, peer = socket.socketpair()
    if pki is None:
        return ours, peer
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.server_cert, pki.server_key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(pki.ca_cert)
    client.check_hostname = False
    ours_tls = server.wrap_socket(ours, server_side=True, do_handshake_on_connect=False)
    peer_tls = client.wrap_socket(peer, do_handshake_on_connect=False)
    # Our reads fail rather than hang when a test goes wrong (the peer's socket stays
    # blocking: with a timeout, its writes wait for a socket pair's buffer to be three
    # quarters empty, which nothing here empties).
    ours_tls.settimeout(10)
    handshake = threading.Thread(target=peer_tls.do_handshake)
    handshake.start()
    ours_tls.do_handshake()
    handshake.join(10)
    assert not handshake.is_alive()
    return ours_tls, peer_tls


@contextlib.contextmanager
def _accepted_dul(
    pki: devpki.DevPki | None = None, switched: bool = True
) -> Iterator[tuple[Any, socket.socket]]:
    """An acceptor's DUL, switched as the server switches it (unless ``switched`` is false:
    pynetdicom's own DUL and socket), reading from a socket pair (over TLS when ``pki`` is
    given)."""
    assoc = Association(AE(), mode="acceptor")
    ours, peer = _socket_pair(pki)
    assoc.dul.socket = AssociationSocket(assoc, client_socket=ours)
    if switched:  # in the order the fence's association adapter applies them
        guard_pdu_reads(assoc, MAX_READ)
        simple_dul_queues(assoc)
        wait_for_events(assoc)
        read_pdata(assoc)
    assert assoc.dul.event_queue.get_nowait() == "Evt5"  # the connection, as accepted
    try:
        yield assoc.dul, peer
    finally:
        peer.close()
        ours.close()


def _pki_of(transport: str, request: pytest.FixtureRequest) -> devpki.DevPki | None:
    return request.getfixturevalue("pki") if transport == "tls" else None


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

    def setsockopt(self, *args: Any) -> None:
        self._sock.setsockopt(*args)

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)


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
    "a P-DATA-TF of several TLS records": (_pdata(b"\x01\x02" + bytes(range(256)) * 200), 1,
                                           False),
    "a P-DATA-TF cut short after several TLS records": (
        _pdata(b"\x01\x02" + b"f" * 50000)[:40000], 1, True),
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


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", list(PEER_STREAMS))
def test_every_outcome_is_pynetdicoms_readers(
    name: str, transport: str, request: pytest.FixtureRequest
) -> None:
    """The reader gives what pynetdicom's own ``_read_pdu_data`` gives on the same socket:
    the same events and PDUs, and the guarded socket left in the same state. Over TLS, a
    peer that stops sending closes the TCP connection without TLS's close_notify."""
    stream, reads, close = PEER_STREAMS[name]
    pki = _pki_of(transport, request)
    with _accepted_dul(pki) as (dul, peer):
        ours = _read(dul, peer, stream, reads, close, type(dul)._read_pdu_data)
    with _accepted_dul(pki) as (dul, peer):
        theirs = _read(dul, peer, stream, reads, close, DULServiceProvider._read_pdu_data)
    assert ours == theirs


#: The streams whose outcome pynetdicom's own socket gives too (the guard's refusals aside).
UNGUARDED_STREAMS = [name for name in PEER_STREAMS
                     if name not in ("an unknown PDU type", "a length over the bound")]


def _pdus_and_events(dul: Any, peer: socket.socket, stream: bytes, reads: int,
                     close: bool) -> list[Any]:
    """What the DUL makes of ``stream``: the events and the PDUs (a P-DATA-TF as its PDVs,
    however it was decoded) after each read."""
    peer.sendall(stream)
    if close:
        peer.shutdown(socket.SHUT_WR)
    seen: list[Any] = []
    for _ in range(reads):
        dul._read_pdu_data()
        pdus: list[Any] = []
        while not dul._recv_pdu.empty():
            pdu = dul._recv_pdu.get_nowait()
            if isinstance(pdu, _ReceivedPData):
                pdus.append([(context, bytes(value)) for context, value in pdu.pdvs])
            elif isinstance(pdu, P_DATA_TF):
                pdus.append([(item.presentation_context_id, item.presentation_data_value)
                             for item in pdu.presentation_data_value_items])
            else:
                pdus.append((type(pdu).__name__, pdu.encode()))
        seen.append((_events(dul), pdus))
    return seen


@pytest.mark.parametrize("name", UNGUARDED_STREAMS)
def test_over_tls_every_outcome_is_pynetdicoms_own_socket_and_reader(
    name: str, pki: devpki.DevPki
) -> None:
    """Over TLS, the server's DUL (the guarded socket's reads of whole TLS records with
    ``SSLSocket.read``, the reader, the decoder, the simple queues) gives what pynetdicom's
    own DUL gives reading the same stream through its own socket (``SSLSocket.recv`` of
    4 KiB pieces): the same events, the same PDUs. A peer that stops sending closes the
    TCP connection without TLS's close_notify."""
    stream, reads, close = PEER_STREAMS[name]
    outcomes = []
    for switched in (True, False):
        with _accepted_dul(pki, switched) as (dul, peer):
            outcomes.append(_pdus_and_events(dul, peer, stream, reads, close))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_body_that_stops_coming_is_a_closed_connection_as_in_pynetdicom(
    transport: str, request: pytest.FixtureRequest
) -> None:
    outcomes = []
    pki = _pki_of(transport, request)
    for reader in (None, DULServiceProvider._read_pdu_data):
        with _accepted_dul(pki) as (dul, peer):
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


def test_over_tls_a_pdu_of_many_records_is_read_whole_into_one_buffer(
    pki: devpki.DevPki,
) -> None:
    value = b"\x01\x02" + bytes(range(256)) * 200
    pdu = _pdata(value)
    with _accepted_dul(pki) as (dul, peer):
        assert isinstance(dul.socket.socket, ssl.SSLSocket)
        for at in range(0, len(pdu), 7000):  # a TLS record (or more) for each piece
            peer.sendall(pdu[at:at + 7000])

        dul._read_pdu_data()

        assert _events(dul) == ["Evt10"]
        read = dul._recv_pdu.get_nowait()
        assert [(context, bytes(data)) for context, data in read.pdvs] == [(1, value[1:])]
        assert bytes(read.pdvs[0][1].obj) == pdu


def test_the_duls_queues_are_simple_queues_that_keep_what_they_held() -> None:
    assoc = Association(AE(), mode="acceptor")
    ours, peer = socket.socketpair()
    try:
        assoc.dul.socket = AssociationSocket(assoc, client_socket=ours)  # queues Evt5
        assoc.dul.event_queue.put("Evt10")
        assoc.dul._recv_pdu.put("a PDU")

        simple_dul_queues(assoc)

        dul = assoc.dul
        assert type(dul.event_queue) is queue.SimpleQueue
        assert type(dul._recv_pdu) is queue.SimpleQueue
        assert [dul.event_queue.get(False), dul.event_queue.get(False)] == ["Evt5", "Evt10"]
        assert dul._recv_pdu.get(False) == "a PDU"
        with pytest.raises(queue.Empty):
            dul.event_queue.get(block=False)
        assert dul.socket.event_queue is dul.event_queue  # the transport puts to the new one
    finally:
        peer.close()
        ours.close()


def test_a_closed_tls_socket_is_read_as_recv_into_reads_it(pki: devpki.DevPki) -> None:
    """``SSLSocket.read`` raises ``ValueError`` on a socket closed or unwrapped under the
    reader, where ``recv_into`` (the read it stands for) raises ``OSError``, which the
    reader takes for a closed connection (Evt17), not for a fault of the DUL."""
    with _accepted_dul(pki) as (dul, peer):
        peer.sendall(b"\x04\x00\x00\x00\x00\x08")  # a header, and the body never comes
        header = dul.socket.recv(6)
        dul.socket.socket.close()
        with pytest.raises(OSError):
            dul.socket.recv_after_header(header, 8)


class _NotingSocket(socket.socket):
    """A TCP socket that notes each read and each TCP_QUICKACK set on it, in order."""

    notes: list[str]

    def setsockopt(self, *args: Any) -> None:  # type: ignore[override]
        if args[:2] == (socket.IPPROTO_TCP, getattr(socket, "TCP_QUICKACK", None)):
            self.notes.append("ack")
        super().setsockopt(*args)

    def recv_into(self, *args: Any) -> int:  # type: ignore[override]
        self.notes.append("read")
        return super().recv_into(*args)

    def recv(self, *args: Any) -> bytes:  # type: ignore[override]
        self.notes.append("read")
        return super().recv(*args)


class _NotingTLSSocket(ssl.SSLSocket):
    """The same over TLS: OpenSSL's reads, as ``_recv`` makes them."""

    notes: list[str]

    def setsockopt(self, *args: Any) -> None:  # type: ignore[override]
        if args[:2] == (socket.IPPROTO_TCP, getattr(socket, "TCP_QUICKACK", None)):
            self.notes.append("ack")
        super().setsockopt(*args)

    def read(self, *args: Any) -> Any:
        self.notes.append("read")
        return super().read(*args)


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux's TCP_QUICKACK")
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_what_has_arrived_is_acknowledged_before_each_read_of_a_pdu(
    transport: str, request: pytest.FixtureRequest
) -> None:
    """A peer with Nagle's algorithm on (dcmtk's default) holds the short tail of a
    message until the bytes before it are acknowledged: every read of a PDU, including
    each further read of a body that arrives in pieces, is preceded by TCP_QUICKACK (the
    kernel would otherwise delay that acknowledgement by some 40 ms)."""
    pki = _pki_of(transport, request)
    value = b"\x01\x02" + bytes(range(256)) * 240
    pdu = _pdata(value)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())  # Nagle left on
        accepted, _ = listener.accept()
    ours: socket.socket = _NotingSocket(fileno=accepted.detach())
    ours.notes = []
    if pki is not None:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(pki.server_cert, pki.server_key)
        server.sslsocket_class = _NotingTLSSocket
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_verify_locations(pki.ca_cert)
        client.check_hostname = False
        peer = client.wrap_socket(peer, do_handshake_on_connect=False)
        handshake = threading.Thread(target=peer.do_handshake)
        handshake.start()
        ours = server.wrap_socket(ours, server_side=True)
        handshake.join(10)
        ours.notes = []
    ours.settimeout(10)
    assoc = Association(AE(), mode="acceptor")
    assoc.dul.socket = AssociationSocket(assoc, client_socket=ours)
    guard_pdu_reads(assoc, MAX_READ)
    transport_socket = assoc.dul.socket

    def write_in_pieces() -> None:
        """Each piece once the reader waits for it (its read begun), so that the body
        arrives in several reads however the two threads are scheduled."""
        for piece, at in enumerate(range(0, len(pdu), 20_000)):
            deadline = time.monotonic() + 10
            while ours.notes.count("read") < piece + 1 and time.monotonic() < deadline:
                time.sleep(0.001)
            peer.sendall(pdu[at:at + 20_000])

    writer = threading.Thread(target=write_in_pieces)
    writer.start()
    try:
        header = transport_socket.recv(6)
        body = transport_socket.recv_after_header(header, len(pdu) - 6)
    finally:
        writer.join(10)
        peer.close()
        ours.close()

    assert bytes(body) == pdu
    notes = ours.notes
    assert notes.count("read") > 2, notes  # the body came in pieces
    assert all(notes[i - 1] == "ack" for i, note in enumerate(notes) if note == "read"), notes


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux's TCP_QUICKACK")
def test_a_sub_associations_reads_acknowledge_first_and_are_pynetdicoms_own() -> None:
    """A C-MOVE sub-association (requestor-acks): the destination's PDUs are read by
    pynetdicom's own ``recv``, each read of a header or a body preceded by TCP_QUICKACK."""
    pdu = _pdata(b"\x03" + b"\x00" * 80)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        raw = socket.create_connection(listener.getsockname())
        destination, _ = listener.accept()
    ours = _NotingSocket(fileno=raw.detach())
    ours.notes = []
    assoc = Association(AE(), mode="requestor")
    assoc.dul.socket = AssociationSocket(assoc, client_socket=ours)
    acknowledge_reads(assoc)
    transport = assoc.dul.socket
    assert isinstance(transport, AcknowledgingSocket)
    try:
        destination.sendall(pdu)
        header = transport.recv(6)
        body = transport.recv(len(pdu) - 6)
    finally:
        destination.close()
        ours.close()
    assert bytes(header + body) == pdu
    assert ours.notes[0] == "ack" and ours.notes.count("ack") == 2, ours.notes
    assert all(ours.notes[i - 1] == "ack" for i, note in enumerate(ours.notes)
               if note == "read" and ours.notes[i - 1] != "read"), ours.notes
