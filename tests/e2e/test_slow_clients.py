"""One slow or hostile client cannot hurt the others (DESIGN.md, invariant 7).

Each test drives a real ``mimic serve`` process on loopback with short deadlines, so that the
deadlines themselves can be watched expire: raw sockets play the clients that stall (no
ClientHello, half a PDU), probe (connect and close) or lie (a 2 GiB PDU length); pynetdicom
plays the real modality that must still be served. The time limits asserted are generous
functional deadlines ("it happens at all, well before the default 60 s / 30 s timeouts"),
never performance thresholds.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from tests.support import (
    HOST,
    MimicProcess,
    associate,
    association_request,
    client_context,
    wait_for,
)

VERIFICATION = "1.2.840.10008.1.1"
A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_ABORT = 0x02, 0x03, 0x04, 0x07

#: A deadline for "the server does it eventually": far above the 2 s timeouts configured here
#: and far below the defaults (60 s network, 30 s ACSE) it would take if they were ignored.
EVENTUALLY = 15.0


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MimicProcess]:
    """Three associations at most, 2 s for a TLS handshake; network timeout left at 60 s."""
    process = MimicProcess(
        tmp_path_factory.mktemp("limited") / "data",
        handshake_timeout="2", max_associations="3", audit_refusal_interval="1",
        workers="1",  # the memory check reads /proc of the process that receives
    ).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MimicProcess]:
    """A connection that is silent for 2 s is dropped."""
    process = MimicProcess(
        tmp_path_factory.mktemp("impatient") / "data", network_timeout="2"
    ).start()
    yield process
    assert process.stop() == 0, process.log()


def tls(server: MimicProcess) -> ssl.SSLContext:
    return client_context(server.client_cert, server.client_key, server.ca_cert)


def reject_of(assoc: Association) -> tuple[int | None, int | None, int | None]:
    """(result, source, reason) of the A-ASSOCIATE-RJ that pynetdicom received."""
    assert assoc.is_rejected, "no A-ASSOCIATE-RJ"
    reject = assoc.acceptor.primitive
    assert reject is not None
    return reject.result, reject.result_source, reject.diagnostic


def echo_ok(server: MimicProcess) -> bool:
    assoc = associate(server.port, tls(server))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0x0000


def closed_by_peer(sock: socket.socket, deadline: float = EVENTUALLY) -> bool:
    """Read (and discard) until the server closes the connection or ``deadline`` passes."""
    sock.settimeout(deadline)
    end = time.monotonic() + deadline
    try:
        while time.monotonic() < end:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    except ssl.SSLError:
        return True  # a TLS alert, then the close
    return False


def associate_rq(calling: str = "MODALITY1", called: str = "MIMIC") -> bytes:
    """An A-ASSOCIATE-RQ PDU for Verification, encoded by pynetdicom's own PDU classes."""
    context = build_context(VERIFICATION)
    context.context_id = 1
    return association_request([context], calling, called)


def read_pdu(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    header = recv_exactly(sock, 6)
    pdu_type, _, length = struct.unpack(">BBL", header)
    return pdu_type, recv_exactly(sock, length)


def recv_exactly(sock: ssl.SSLSocket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return data


@contextlib.contextmanager
def raw_tls(server: MimicProcess) -> Iterator[ssl.SSLSocket]:
    """A trusted TLS connection on which we write PDUs by hand."""
    raw = socket.create_connection((HOST, server.port), timeout=10)
    with tls(server).wrap_socket(raw, server_hostname="localhost") as sock:
        yield sock


@contextlib.contextmanager
def raw_association(server: MimicProcess) -> Iterator[ssl.SSLSocket]:
    """TLS + an accepted association, written by hand so that we can misbehave after it."""
    with raw_tls(server) as sock:
        sock.sendall(associate_rq())
        pdu_type, _ = read_pdu(sock)
        assert pdu_type == A_ASSOCIATE_AC, f"PDU type 0x{pdu_type:02X}, not A-ASSOCIATE-AC"
        yield sock


def peak_rss_kib(server: MimicProcess) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


# -- the TLS handshake ----------------------------------------------------------------------


def test_clients_that_never_send_a_client_hello(limited: MimicProcess) -> None:
    """Five connections that never start TLS do not delay a modality, and are closed by the
    handshake deadline (2 s here) instead of holding a thread each forever."""
    stalled = [socket.create_connection((HOST, limited.port), timeout=10) for _ in range(5)]
    try:
        started = time.monotonic()
        assoc = associate(limited.port, tls(limited))
        assert assoc.is_established
        status = assoc.send_c_echo()
        assoc.release()
        assert status.Status == 0x0000
        assert time.monotonic() - started < 5.0, "the echo waited for the stalled handshakes"
        for sock in stalled:
            assert closed_by_peer(sock), "a silent TLS client outlived the handshake deadline"
    finally:
        for sock in stalled:
            sock.close()

    def timeouts() -> int:  # refusals are logged as counts (the first at once)
        return sum(
            int(e.get("count", 1)) for e in limited.log_entries()
            if e.get("message") == "connection refused"
            and "TimeoutError" in str(e.get("reason", ""))
        )

    assert wait_for(lambda: timeouts() >= 5, timeout=10), limited.log()


# -- the association limit ------------------------------------------------------------------


def test_probes_do_not_use_up_the_association_limit(limited: MimicProcess) -> None:
    """Health probes and port scans connect and close without an A-ASSOCIATE-RQ. Ten of each
    kind (more than the limit of 3) leave every slot free for the next modality: plain TCP,
    TLS without a certificate, and TLS with a trusted certificate (a client that only looks
    at the server's certificate)."""
    anonymous = client_context(None, None, limited.ca_cert)
    for _ in range(10):
        socket.create_connection((HOST, limited.port), timeout=10).close()
        for ctx in (anonymous, tls(limited)):
            raw = socket.create_connection((HOST, limited.port), timeout=10)
            with contextlib.suppress(ssl.SSLError, OSError):
                ctx.wrap_socket(raw, server_hostname="localhost").close()
            raw.close()
    # A modality arriving after the probes have gone; had they kept their slots, they would
    # keep them for the ACSE timeout (30 s), far longer than this test.
    time.sleep(0.5)
    held = [associate(limited.port, tls(limited)) for _ in range(3)]
    try:
        assert all(a.is_established for a in held), "probes used up the association limit"
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()


def test_one_association_over_the_limit_is_rejected(limited: MimicProcess) -> None:
    """With 3 associations open, a 4th gets A-ASSOCIATE-RJ transient, service provider
    (presentation), local limit exceeded: result 2, source 3, reason 2 (PS3.8 Table 9-21).
    When one of the three is released, the next modality is accepted again."""
    held = [associate(limited.port, tls(limited)) for _ in range(3)]
    try:
        assert all(a.is_established for a in held)
        extra = associate(limited.port, tls(limited))
        assert extra.is_rejected
        assert reject_of(extra) == (2, 3, 2)
        held.pop().release()
        assert wait_for(lambda: echo_ok(limited), timeout=EVENTUALLY)
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()


def test_connections_not_yet_admitted_take_no_slot(limited: MimicProcess) -> None:
    """Six connections past their handshake send their A-ASSOCIATE-RQs at once, three slots:
    three are accepted, three rejected 2/3/2. Counted as associations before admission,
    each saw the other five and all could be rejected on an idle server."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(raw_tls(limited)) for _ in range(6)]
        time.sleep(1.0)  # the server ends its side of each handshake after the client's
        for sock in socks:
            sock.sendall(associate_rq())
        answers = sorted(read_pdu(sock)[0] for sock in socks)
    assert answers == [A_ASSOCIATE_AC] * 3 + [A_ASSOCIATE_RJ] * 3
    assert wait_for(lambda: echo_ok(limited), timeout=EVENTUALLY)


def hold_all_slots(server: MimicProcess, slots: int) -> bool:
    """Open ``slots`` associations at once; True if every one was accepted (then release)."""
    held = [associate(server.port, tls(server)) for _ in range(slots)]
    try:
        return all(a.is_established for a in held)
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()


@pytest.mark.parametrize("closes", [True, False], ids=["then-closes", "stays-open"])
def test_an_unknown_first_pdu_frees_the_slot_at_once(limited: MimicProcess, closes: bool) -> None:
    """Five trusted TLS connections each send one 10-byte PDU of an unknown type (0x09),
    then close or stay open. pynetdicom answers A-ABORT (Sta13) and used to wait for the
    peer's close (ARTIM) or for an A-ASSOCIATE-RQ that can never come, the ACSE timeout
    (30 s) either way, each connection holding a slot: every slot must be free for the next
    modalities long before that, and a peer that stays open is closed by the server."""
    with contextlib.ExitStack() as stack:
        opened = [stack.enter_context(raw_tls(limited)) for _ in range(5)]
        for sock in opened:
            sock.sendall(struct.pack(">BBL", 0x09, 0, 4) + b"\x00" * 4)
            if closes:
                sock.close()
        assert wait_for(lambda: hold_all_slots(limited, 3), timeout=EVENTUALLY), (
            "connections that sent an unknown PDU still hold association slots"
        )
        if not closes:
            for sock in opened:
                assert closed_by_peer(sock), "a connection that sent garbage was left open"


def with_titles(request: bytes, called: bytes, calling: bytes) -> bytes:
    """``request`` (an A-ASSOCIATE-RQ) with its Called and Calling AE Title fields (PS3.8
    Table 9-11: 16 bytes each, after the header, the protocol version and two reserved
    bytes) replaced by these bytes as they are, space-padded: titles pynetdicom's own
    encoder refuses to write."""
    return request[:10] + called.ljust(16) + calling.ljust(16) + request[42:]


@pytest.mark.parametrize(("called", "calling", "reason"), [
    pytest.param(b"MIMIC", b"", "invalid Calling AE Title", id="calling-empty"),
    pytest.param(b"MIMIC".ljust(16, b"\0"), b"MODALITY1", "invalid Called AE Title",
                 id="called-nul-padded"),
    pytest.param(b"MIMIC", b"CT\\1", "invalid Calling AE Title", id="calling-backslash"),
    pytest.param(b"MIMIC", b"CT\xe9", "a title or UID that is not ASCII text",
                 id="calling-latin-1"),
])
def test_an_association_request_that_does_not_decode_is_logged(
    limited: MimicProcess, called: bytes, calling: bytes, reason: str
) -> None:
    """A trusted peer's A-ASSOCIATE-RQ whose AE title pynetdicom refuses to decode is
    answered A-ABORT (AA-1), as before; the server's log said nothing at all, so the
    operator of a modality told "aborted" found no trace of its call. Now one WARNING names
    the certificate and the field, never the value; the server goes on serving."""
    logged = limited.log_mark()
    with raw_tls(limited) as sock:
        sock.sendall(with_titles(associate_rq(), called, calling))
        pdu_type, _ = read_pdu(sock)
    assert pdu_type == A_ABORT

    def said() -> list[dict]:
        return [e for e in limited.log_entries()[logged:]
                if e.get("message") == "association request not understood: aborted"]

    assert wait_for(lambda: len(said()) == 1, timeout=EVENTUALLY), limited.log()[-2000:]
    entry = said()[0]
    assert entry["level"] == "WARNING"
    assert entry["reason"] == reason
    assert entry["identity"].startswith("modality1 ")
    assert "CT" not in str(entry)  # the value itself is not quoted
    assert echo_ok(limited)


@pytest.mark.parametrize("then", [
    pytest.param(struct.pack(">BBL", A_ABORT, 0, 4) + b"\x00" * 4, id="A-ABORT"),
    pytest.param(struct.pack(">BBL", 0x05, 0, 4) + b"\x00" * 4, id="A-RELEASE-RQ"),
])
def test_a_request_withdrawn_before_its_answer_is_no_rejection(
    limited: MimicProcess, then: bytes
) -> None:
    """A requestor sends its A-ASSOCIATE-RQ and, before the answer, an A-ABORT (and
    closes) or an A-RELEASE-RQ: the request is gone, nothing is to be answered. The
    admission took the closed connection for a full house: "association rejected", reason
    "too many simultaneous associations" (2/3/2), logged and audited on an idle archive
    (4 times in 5 here); or it accepted, and the A-ASSOCIATE-AC, sent to a state machine
    that had already aborted, was logged at ERROR as an unexpected error. Now neither: at
    most an INFO line, and the server goes on serving."""
    logged = limited.log_mark()
    for _ in range(10):
        with raw_tls(limited) as sock:
            sock.sendall(associate_rq() + then)
            with contextlib.suppress(OSError):
                read_pdu(sock)
        time.sleep(0.05)
    assert echo_ok(limited)
    time.sleep(0.5)  # the last association threads' lines
    entries = limited.log_entries()[logged:]
    assert [e for e in entries if e.get("message") == "association rejected"] == []
    assert [e for e in entries if e.get("level") == "ERROR"] == []


# -- PDUs -----------------------------------------------------------------------------------


def test_a_client_that_stalls_mid_pdu_is_dropped(impatient: MimicProcess) -> None:
    """A P-DATA-TF header announcing 1000 bytes, then silence: the server drops the
    connection after its network timeout (2 s here), and keeps serving others meanwhile."""
    with raw_association(impatient) as sock:
        started = time.monotonic()
        sock.sendall(struct.pack(">BBL", P_DATA_TF, 0, 1000) + b"\x00" * 10)
        assert echo_ok(impatient), "a stalled association blocked another one"
        assert closed_by_peer(sock), "the stalled connection was never dropped"
        waited = time.monotonic() - started
    # The server cannot have heard from us later than we sent: a drop sooner than its 2 s
    # would be a refusal of the (valid) PDU header, not the network timeout at work.
    assert waited >= 1.5, f"dropped after {waited:.2f} s: not by the network timeout"
    assert echo_ok(impatient)


def dropped_while_trickling(sock: ssl.SSLSocket, data: bytes, interval: float) -> int | None:
    """Send ``data`` one byte every ``interval`` seconds; the number of bytes sent when the
    server closed the connection, or None if all of it was sent."""
    for sent in range(len(data)):
        try:
            sock.sendall(data[sent:sent + 1])
            readable, _, _ = select.select([sock], [], [], interval)
            if readable and not sock.recv(65536):
                return sent + 1
        except (ConnectionError, ssl.SSLError, TimeoutError):
            return sent
    return None


@pytest.mark.parametrize("phase", ["A-ASSOCIATE-RQ", "P-DATA-TF"])
def test_a_pdu_trickled_one_byte_at_a_time_is_dropped(impatient: MimicProcess,
                                                      phase: str) -> None:
    """Each byte within the network timeout (2 s here), the whole PDU never: the connection
    is dropped once the PDU has taken a network timeout, its slot freed. The timeout bounded
    each read alone, and such a peer held its thread and slot for as long as it went on."""
    pdata = struct.pack(">BBL", P_DATA_TF, 0, 1000) + b"\x00" * 1000
    with contextlib.ExitStack() as stack:
        if phase == "A-ASSOCIATE-RQ":
            sock, data = stack.enter_context(raw_tls(impatient)), associate_rq()
        else:
            sock, data = stack.enter_context(raw_association(impatient)), pdata
        # 0.5 s a byte: the whole PDU would take minutes; within EVENTUALLY it is dropped.
        sent = dropped_while_trickling(sock, data[: int(EVENTUALLY / 0.5)], 0.5)
        assert sent is not None, "a trickled PDU was never dropped"
    assert echo_ok(impatient)
    assert wait_for(lambda: any(
        e.get("message") == "a PDU was not received whole within its time limit: connection "
        "dropped" and e.get("level") == "WARNING" for e in impatient.log_entries()))


@pytest.mark.parametrize("pdvs", [
    pytest.param(struct.pack(">LB", 1, 1), id="a PDV without its message control header"),
    pytest.param(struct.pack(">LB", 2, 1) + b"\x03", id="a last command fragment, empty"),
    pytest.param(struct.pack(">LBB", 10, 1, 3) + b"\x00" * 8,
                 id="a command set without a Command Field"),
    pytest.param(struct.pack(">LBB", 2, 9, 3), id="an empty command on no accepted context"),
])
def test_a_pdata_that_does_not_decode_is_answered_with_an_abort(
    limited: MimicProcess, pdvs: bytes
) -> None:
    """pynetdicom raised in its DUL thread, which died with a traceback on stderr: the peer
    saw its connection dropped without an A-ABORT. Now: A-ABORT (source 2, service
    provider), one WARNING record, no traceback; the server goes on serving."""
    logged = len(limited.log())
    stored = (limited.instance_count(), limited.stored_objects())
    with raw_association(limited) as sock:
        sock.sendall(struct.pack(">BBL", P_DATA_TF, 0, len(pdvs)) + pdvs)
        pdu_type, body = read_pdu(sock)
    assert (pdu_type, body[2]) == (A_ABORT, 2)
    assert wait_for(lambda: "aborting" in limited.log()[logged:], timeout=EVENTUALLY)
    assert "Traceback" not in limited.log()[logged:]
    assert echo_ok(limited)
    assert (limited.instance_count(), limited.stored_objects()) == stored
    assert limited.incoming_leftovers() == []


@pytest.mark.parametrize(
    ("pdu_type", "after_association"),
    [
        pytest.param(0x01, False, id="A-ASSOCIATE-RQ"),
        pytest.param(P_DATA_TF, True, id="P-DATA-TF"),
    ],
)
def test_a_huge_pdu_length_is_refused_without_allocation(
    limited: MimicProcess, pdu_type: int, after_association: bool
) -> None:
    """A PDU header announcing 0x7FFFFFFF bytes: the connection is closed at once, long
    before any timeout (60 s network timeout here), without the server growing by the
    announced 2 GiB, and the server goes on serving."""
    before = peak_rss_kib(limited)
    opened = raw_association if after_association else raw_tls
    with opened(limited) as sock:
        sock.sendall(struct.pack(">BBL", pdu_type, 0, 0x7FFFFFFF) + b"\x00" * 64)
        assert closed_by_peer(sock, deadline=10.0), "the huge PDU was not refused"
    assert limited.proc is not None and limited.proc.poll() is None
    assert peak_rss_kib(limited) - before < 512 * 1024, "the server allocated the huge PDU"
    assert echo_ok(limited)


def test_an_idle_association_is_aborted_at_the_network_timeout(impatient: MimicProcess) -> None:
    """An established association on which nothing is sent: the server's association thread,
    blocked on its queue between messages (net/reactor.py), still wakes at the network
    timeout and aborts it; the peer sees the A-ABORT and the server's threads end."""
    ctx = client_context(impatient.client_cert, impatient.client_key, impatient.ca_cert)
    assoc = associate(impatient.port, ctx)
    assoc.network_timeout = None  # the client waits: only the server's timer may end it
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0

    assert wait_for(lambda: not assoc.is_established, EVENTUALLY), "never timed out"
    assert assoc.is_aborted
    assert echo_ok(impatient)
