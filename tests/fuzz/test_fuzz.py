"""Generated malformed PDUs and data sets against one running server (hypothesis).

A hostile or broken peer with a trusted certificate sends what hypothesis makes of it:
PDUs of any type with lengths that lie, A-ASSOCIATE-RQs cut or damaged anywhere, garbage
P-DATA after an accepted association, and C-STOREs of real test files damaged by cuts,
wrong lengths, wrong VRs and inserted bytes. After each batch the server must still answer
a valid client; after all of them it must have lost no association slot and leaked no
thread, and every object it stored must be indexed and parse to its end.

The number of examples is bounded (a few seconds a batch); a failing example is printed
with its ``@reproduce_failure`` blob. Timeouts are short on this server (2 s ACSE, 3 s
network) so that a connection the server keeps waiting on ends within the test.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import UID
from pynetdicom.association import Association

from tests.data import Storable, storable_files
from tests.e2e.test_slow_clients import associate_rq, read_pdu
from tests.fuzz.oracle import invalid_objects, thread_count
from tests.malformed import part10
from tests.support import HOST, MimicProcess, associate, client_context, wait_for

pytestmark = pytest.mark.fuzz

MAX_ASSOCIATIONS = 3
ACSE_TIMEOUT = 2.0
NETWORK_TIMEOUT = 3.0
#: Long enough for every connection the server still waits on to time out, and then some.
SETTLE = 2 * (ACSE_TIMEOUT + NETWORK_TIMEOUT) + 5

#: Statuses a damaged data set may get: stored (some damage leaves a valid data set, e.g.
#: a cut between two elements), or refused as not matching / not understood, or as naming a
#: study or series filed under another patient or study (a changed byte in one UID of a
#: seed stored before). Never 0xA700 (the store or index failed) nor 0xC211 (an exception
#: the handler did not expect).
ACCEPTABLE_STORE_STATUSES = {0x0000, 0xA900, 0xC000, 0xC001, 0xC002, 0xC003}

#: Real files to damage: explicit and implicit VR, big endian, Deflated, encapsulated (RLE,
#: JPEG, JPEG 2000 with an undefined-length UN sequence), nested sequences (SR).
SEEDS = ("CT_small.dcm", "gdcm-US-ALOKA-16.dcm", "ExplVR_BigEnd.dcm", "explicit_VR-UN.dcm",
         "rtdose_rle.dcm", "SC_rgb_jpeg.dcm", "image_dfl.dcm", "test-SR.dcm")


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=timedelta(seconds=20),  # a bound on a stuck example, not a speed check
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@dataclass
class Fuzzed:
    server: MimicProcess
    baseline_threads: int
    scratch: Path

    def tls(self) -> ssl.SSLContext:
        return client_context(self.server.client_cert, self.server.client_key,
                              self.server.ca_cert)

    def answers_again(self) -> bool:
        """A valid C-ECHO succeeds, at once or once the connections the server still waits on
        have timed out: a peer that sent a PDU the server does not know (e.g. type 0x09)
        may hold its slot until the ACSE timeout (a known limitation, fixed elsewhere)."""
        return wait_for(self.echo_ok, timeout=SETTLE, interval=0.5)

    def echo_ok(self) -> bool:
        assoc = associate(self.server.port, self.tls())
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        assoc.release()
        return bool(status) and status.Status == 0x0000


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    root = tmp_path_factory.mktemp("fuzz")
    server = MimicProcess(
        root / "data",
        max_associations=str(MAX_ASSOCIATIONS),
        acse_timeout=str(ACSE_TIMEOUT),
        network_timeout=str(NETWORK_TIMEOUT),
        handshake_timeout="3",
        workers="1",  # the thread oracle reads /proc of the process that serves
    ).start()
    target = Fuzzed(server, 0, root)
    assert target.echo_ok()
    time.sleep(1.0)  # pynetdicom's threads of that association end
    target.baseline_threads = thread_count(server)
    yield target
    assert server.stop() == 0, server.log()


@contextlib.contextmanager
def _trusted_tls(target: Fuzzed) -> Iterator[ssl.SSLSocket]:
    raw = socket.create_connection((HOST, target.server.port), timeout=10)
    with target.tls().wrap_socket(raw, server_hostname="localhost") as sock:
        yield sock


@contextlib.contextmanager
def _raw_association(target: Fuzzed) -> Iterator[ssl.SSLSocket]:
    """An accepted association written by hand; while earlier examples' connections still
    hold every slot (until the server's timeouts end them) the server rejects, so retry."""
    deadline = time.monotonic() + SETTLE
    while True:
        with _trusted_tls(target) as sock:
            sock.sendall(associate_rq())
            answer, _ = read_pdu(sock)
            if answer == 0x02:
                yield sock
                return
        assert answer == 0x03, f"A-ASSOCIATE-AC or -RJ expected, got PDU type 0x{answer:02X}"
        assert time.monotonic() < deadline, "every association slot stayed taken"
        time.sleep(0.5)


def _send_and_hang_up(sock: ssl.SSLSocket, data: bytes) -> None:
    """Send, read what the server answers for a moment, and close (as a broken peer would)."""
    with contextlib.suppress(OSError):
        sock.sendall(data)
        sock.settimeout(0.2)
        while sock.recv(65536):
            pass


# -- (a) malformed PDUs after a valid TLS handshake ------------------------------------------


pdu_types = st.integers(0, 255)
bodies = st.binary(max_size=300)


def test_random_pdus_with_lying_lengths(fuzzed: Fuzzed) -> None:
    @_settings(30)
    @given(pdu_type=pdu_types, body=bodies, declared=st.none() | st.integers(0, 2**32 - 1),
           reserved=st.integers(0, 255))
    def example(pdu_type: int, body: bytes, declared: int | None, reserved: int) -> None:
        length = len(body) if declared is None else declared
        with _trusted_tls(fuzzed) as sock:
            _send_and_hang_up(sock, struct.pack(">BBL", pdu_type, reserved, length) + body)

    example()
    assert fuzzed.answers_again()


def test_damaged_associate_requests(fuzzed: Fuzzed) -> None:
    valid = associate_rq()

    @_settings(30)
    @given(cut=st.integers(1, len(valid)), fix_length=st.booleans(),
           flips=st.lists(st.tuples(st.integers(6, len(valid) - 1), st.integers(0, 255)),
                          max_size=4))
    def example(cut: int, fix_length: bool, flips: list[tuple[int, int]]) -> None:
        pdu = bytearray(valid)
        for position, value in flips:
            pdu[position] = value
        pdu = pdu[:cut]
        if fix_length and cut >= 6:  # the PDU says it is this short: its items are cut
            pdu[2:6] = struct.pack(">L", cut - 6)
        with _trusted_tls(fuzzed) as sock:
            _send_and_hang_up(sock, bytes(pdu))

    example()
    assert fuzzed.answers_again()


def test_garbage_after_association(fuzzed: Fuzzed) -> None:
    pdvs = st.lists(
        st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=200),
                  st.none() | st.integers(0, 2**32 - 1)),
        min_size=1, max_size=4,
    )

    @_settings(30)
    @given(pdvs=pdvs, tail=st.binary(max_size=64), pdu_type=st.sampled_from([0x04, 0x04, 0x05,
           0x06, 0x07, 0x09, 0x01]))
    def example(pdvs: list[tuple[int, int, bytes, int | None]], tail: bytes,
                pdu_type: int) -> None:
        items = b"".join(
            struct.pack(">LBB", len(payload) + 2 if lie is None else lie, context, control)
            + payload
            for context, control, payload, lie in pdvs
        )
        with _raw_association(fuzzed) as sock:
            _send_and_hang_up(sock, struct.pack(">BBL", pdu_type, 0, len(items)) + items + tail)

    example()
    assert fuzzed.answers_again()


# -- (b) malformed data sets in C-STORE ------------------------------------------------------


def _seeds() -> list[Storable]:
    found = [f for f in storable_files() if f.path.name in SEEDS]
    assert len(found) == len(SEEDS), [f.path.name for f in found]
    return found


@st.composite
def damaged_data_sets(draw: st.DrawFn, seeds: list[Storable]) -> tuple[Storable, bytes]:
    """A seed file's data set with one to three damages, each at a drawn position."""
    seed = draw(st.sampled_from(seeds))
    data = bytearray(seed.dataset_bytes())
    little = UID(seed.transfer_syntax_uid).is_little_endian
    for _ in range(draw(st.integers(1, 3))):
        damage = draw(st.sampled_from(["cut", "length", "vr", "insert", "bytes"]))
        # Element headers are most often in the first part of a file (Pixel Data is last).
        at = draw(st.integers(0, max(0, min(len(data), 4096) - 1)))
        if damage == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif damage == "length":  # a 16- or 32-bit length field anywhere near a header
            size = draw(st.sampled_from([2, 4]))
            value = draw(st.integers(0, 2 ** (8 * size) - 1))
            data[at : at + size] = value.to_bytes(size, "little" if little else "big")
        elif damage == "vr":
            data[at : at + 2] = draw(st.binary(min_size=2, max_size=2))
        elif damage == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[at : at + 4] = draw(st.binary(min_size=4, max_size=4))
    return seed, bytes(data)


def test_damaged_data_sets_in_c_store(fuzzed: Fuzzed) -> None:
    seeds = _seeds()
    statuses: dict[int, int] = {}

    @_settings(60)
    @given(case=damaged_data_sets(seeds))
    def example(case: tuple[Storable, bytes]) -> None:
        seed, data = case
        path = part10(seed, data, fuzzed.scratch, "damaged")
        def opened() -> Association:
            return associate(fuzzed.server.port, fuzzed.tls(), contexts=[seed.sop_class_uid],
                             transfer_syntaxes=[seed.transfer_syntax_uid])

        assoc = opened()
        deadline = time.monotonic() + SETTLE
        while assoc.is_rejected and time.monotonic() < deadline:  # slots still held, as above
            time.sleep(0.5)
            assoc = opened()
        assert assoc.is_established
        try:
            answer = assoc.send_c_store(path)
        finally:
            assoc.release()
        assert answer, "no C-STORE response"
        status = int(answer.Status)
        statuses[status] = statuses.get(status, 0) + 1
        assert status in ACCEPTABLE_STORE_STATUSES, (
            hex(status), str(answer.get("ErrorComment", ""))
        )

    example()
    assert fuzzed.answers_again()
    assert statuses.get(0xC000), statuses  # the damages did reach the structural walk
    assert invalid_objects(fuzzed.server) == []


# -- after all of it --------------------------------------------------------------------------


def test_nothing_lost_leaked_or_stored_invalid(fuzzed: Fuzzed) -> None:
    """Every slot comes back (all MAX_ASSOCIATIONS at once), the thread count returns to its
    baseline, and every stored object is indexed and parses to its end."""

    def all_slots_free() -> bool:
        held = [associate(fuzzed.server.port, fuzzed.tls()) for _ in range(MAX_ASSOCIATIONS)]
        try:
            return all(a.is_established for a in held)
        finally:
            for assoc in held:
                if assoc.is_established:
                    assoc.release()

    assert wait_for(all_slots_free, timeout=SETTLE, interval=1.0), "an association slot is lost"
    assert fuzzed.echo_ok()
    assert wait_for(
        lambda: thread_count(fuzzed.server) <= fuzzed.baseline_threads,
        timeout=SETTLE, interval=0.5,
    ), f"{thread_count(fuzzed.server)} threads, {fuzzed.baseline_threads} before the fuzzing"
    assert invalid_objects(fuzzed.server) == []
