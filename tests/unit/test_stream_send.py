"""dimse/stream_send.py: a large object's C-STORE request streamed to a DUL's queue.

The DUL here is a stand-in: a real ``queue.Queue`` emptied by a thread with ``get(False)``,
as pynetdicom's DT-1 does. What the sender must show: the fragments are the data set, in
order, with the right control headers and within the peer's maximum PDU; the queue never
holds more than a few; an association that ends midway stops the stream, closes the
store's handle and answers "no response" at once.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import threading
import time
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from mimic_server.archive.read import VerifiedObject, open_verified
from mimic_server.dimse import stream_send
from mimic_server.dimse.stream_send import StreamedDataset
from mimic_server.errors import CannotUnderstand, OutOfResources
from mimic_server.query.finder import InstanceRef
from mimic_server.security.transfer_tally import TransferTally
from mimic_server.storage.memory import MemoryStore
from tests.data_sets import encoded

SC = "1.2.840.10008.5.1.4.1.1.7"
UID = "1.2.826.0.1.3680043.8.498.4242"


class ClosingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.handles: list[io.BytesIO] = []

    def open(self, key: str) -> BinaryIO:
        handle = io.BytesIO(self.objects[key])
        self.handles.append(handle)
        return handle


def _large(store: MemoryStore, size: int = 300_000, syntax: str = ExplicitVRLittleEndian,
           streamed: bool = True) -> VerifiedObject:
    """A real Part 10 object (Explicit VR Little Endian) of about ``size`` bytes (deflated,
    much smaller), read from ``store`` (``streamed``) or held in memory."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SC, UID
    ds.PatientID = "STREAM"
    ds.PixelData = bytes(range(256)) * (size // 256)
    ds["PixelData"].VR = "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SC, UID
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    store.objects["k"] = data
    ref = InstanceRef(SC, UID, syntax, "k", hashlib.sha256(data).hexdigest())
    stored = open_verified(store, ref, stream_above=1_000 if streamed else 1 << 22)
    assert stored is not None and stored.streamed == streamed
    return stored


class FakeDUL:
    """pynetdicom's DUL as the sender sees it; ``drain`` takes P-DATAs off like DT-1."""

    def __init__(self, alive_for: int | None = None) -> None:
        self.to_provider_queue: queue.Queue[Any] = queue.Queue()
        self.sent: list[P_DATA] = []
        self.deepest = 0
        self.alive_for = alive_for  # P-DATAs taken before the connection is gone
        self.state_machine = type("SM", (), {"current_state": "Sta6"})()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def send_pdu(self, primitive: Any) -> None:
        self.to_provider_queue.put(primitive)
        self.deepest = max(self.deepest, self.to_provider_queue.qsize())

    def is_alive(self) -> bool:
        return self.state_machine.current_state == "Sta6"

    def _drain(self) -> None:
        while not self._stop.is_set():
            if self.alive_for is not None and len(self.sent) >= self.alive_for:
                self.state_machine.current_state = "Sta1"  # peer aborted: nothing is taken
                return
            try:
                self.sent.append(self.to_provider_queue.get(False))
            except queue.Empty:
                time.sleep(0.0005)
                continue
            time.sleep(0.0002)  # a socket send

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class FakeDIMSE:
    def __init__(self, dul: FakeDUL, max_pdu: int) -> None:
        self.dul = dul
        self.maximum_pdu_size = max_pdu
        self.msg_queue: queue.Queue[Any] = queue.Queue()
        acse = type("ACSE", (), {"is_aborted": lambda self: False})()
        self.assoc = type("Assoc", (), {"acse": acse, "get_handlers": lambda self, e: []})()


def _request() -> C_STORE:
    req = C_STORE()
    req.MessageID = 7
    req.AffectedSOPClassUID = SC
    req.AffectedSOPInstanceUID = UID
    req.Priority = 2
    req.DataSet = io.BytesIO(b"")
    return req


def _send(dimse: FakeDIMSE, stored: VerifiedObject, fallback: list[Any],
          deflated: bool = False, implicit: bool = False) -> None:
    dataset = StreamedDataset.of(stored)
    encode = stream_send.streamed_encoder(lambda *a: pytest.fail("encoded by pydicom"))
    assert encode(dataset, implicit, True, deflated) == b""
    assert dataset._mimic_encoded
    sender = stream_send.streamed_sender(lambda *a: fallback.append(a))
    sender(dimse, _request(), 3)


def _send_and_drain(dimse: FakeDIMSE, stored: VerifiedObject, implicit: bool = False,
                    deflated: bool = False) -> None:
    """``_send``, then until the stand-in DUL has taken every P-DATA off its queue."""
    try:
        _send(dimse, stored, [], deflated=deflated, implicit=implicit)
        deadline = time.monotonic() + 10
        while dimse.dul.to_provider_queue.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        dimse.dul.stop()


@pytest.mark.parametrize("max_pdu", [16382, 0], ids=["16 KiB PDUs", "unlimited"])
def test_the_data_set_is_streamed_in_order_within_the_pdu_and_the_queue(max_pdu: int) -> None:
    store = ClosingStore()
    stored = _large(store)
    dul = FakeDUL()
    fallback: list[Any] = []
    try:
        _send(FakeDIMSE(dul, max_pdu), stored, fallback)
        deadline = time.monotonic() + 10
        while dul.to_provider_queue.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        dul.stop()

    assert fallback == []
    values = [pdv for p in dul.sent for pdv in p.presentation_data_value_list]
    assert all(context == 3 for context, _ in values)
    headers = [v[0] for _, v in values]
    commands = [v for _, v in values if v[0] & 0x01]
    fragments = [v for _, v in values if not v[0] & 0x01]
    assert headers[: len(commands)] == [0x01] * (len(commands) - 1) + [0x03]
    assert [f[0] for f in fragments] == [0x00] * (len(fragments) - 1) + [0x02]
    data = store.objects["k"]
    assert b"".join(f[1:] for f in fragments) == data[stored.dataset_offset:]
    limit = (max_pdu - 6) if max_pdu else stream_send.FRAGMENT
    assert max(len(f) - 1 for f in fragments) <= limit
    assert dul.deepest <= stream_send.QUEUE_DEPTH + len(commands)
    assert all(h.closed for h in store.handles)


def _fragments(dul: FakeDUL) -> list[bytes]:
    values = [v for p in dul.sent for _, v in p.presentation_data_value_list]
    fragments = [v for v in values if not v[0] & 0x01]
    assert [f[0] for f in fragments] == [0x00] * (len(fragments) - 1) + [0x02]
    return fragments


@pytest.mark.parametrize("streamed", [True, False], ids=["from the store", "held"])
def test_a_deflated_object_goes_inflated_to_an_explicit_vr_context(streamed: bool) -> None:
    """A destination that did not accept Deflated gets the data set inflated as it is sent:
    Explicit VR Little Endian byte for byte (PS3.5 A.5), never inflated whole; pydicom
    inflated and re-encoded it whole before (a megabyte stored can inflate to 1 GiB)."""
    store = ClosingStore()
    stored = _large(store, 2_000_000, DeflatedExplicitVRLittleEndian, streamed)
    dul = FakeDUL()
    _send_and_drain(FakeDIMSE(dul, 16382), stored)  # never pydicom's encoder (_send)
    fragments = _fragments(dul)
    data = store.objects["k"]
    assert len(data) < 100_000
    inflated = zlib.decompress(data[stored.dataset_offset:], -zlib.MAX_WBITS)
    assert b"".join(f[1:] for f in fragments) == inflated
    assert max(len(f) - 1 for f in fragments) <= 16382 - 6
    assert all(h.closed for h in store.handles)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian],
                         ids=["explicit", "deflated"])
@pytest.mark.parametrize("streamed", [True, False], ids=["from the store", "held"])
def test_an_object_goes_re_encoded_to_an_implicit_vr_context(syntax: str, streamed: bool) -> None:
    """A destination that accepted only Implicit VR Little Endian gets the data set
    re-encoded as it is sent, the bytes pydicom's own encoder gives for it, in fragments
    within the PDU; pydicom parsed and re-encoded the whole object before."""
    store = ClosingStore()
    stored = _large(store, 2_000_000, syntax, streamed)
    dul = FakeDUL()
    _send_and_drain(FakeDIMSE(dul, 16382), stored, implicit=True)
    fragments = _fragments(dul)
    expected = encoded(pydicom.dcmread(io.BytesIO(store.objects["k"])), implicit=True)
    assert b"".join(f[1:] for f in fragments) == expected
    assert max(len(f) - 1 for f in fragments) <= 16382 - 6
    assert all(h.closed for h in store.handles)


@pytest.mark.parametrize("streamed", [True, False], ids=["from the store", "held"])
def test_an_implicit_vr_object_goes_re_encoded_to_an_explicit_vr_context(streamed: bool) -> None:
    """A destination that accepted only Explicit VR Little Endian gets an Implicit VR data
    set re-encoded as it is sent (``codec/explicit_stream``), the bytes pydicom's own
    encoder gives for it; pydicom parsed and re-encoded the whole object before."""
    store = ClosingStore()
    stored = _large(store, 2_000_000, ImplicitVRLittleEndian, streamed)
    dul = FakeDUL()
    _send_and_drain(FakeDIMSE(dul, 16382), stored)  # never pydicom's encoder (_send)
    fragments = _fragments(dul)
    expected = encoded(pydicom.dcmread(io.BytesIO(store.objects["k"])), implicit=False)
    assert b"".join(f[1:] for f in fragments) == expected
    assert max(len(f) - 1 for f in fragments) <= 16382 - 6
    assert all(h.closed for h in store.handles)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                         ids=["explicit", "implicit"])
def test_an_object_goes_deflated_to_a_deflated_only_context(syntax: str) -> None:
    """A destination that accepted only Deflated gets the data set deflated as it is sent
    (an Implicit VR one re-encoded in Explicit VR first): once inflated, the bytes
    pydicom's encoder gives in Explicit VR; an even length."""
    store = ClosingStore()
    stored = _large(store, 2_000_000, syntax)
    dul = FakeDUL()
    _send_and_drain(FakeDIMSE(dul, 16382), stored, deflated=True)
    sent = b"".join(f[1:] for f in _fragments(dul))
    expected = encoded(pydicom.dcmread(io.BytesIO(store.objects["k"])), implicit=False)
    assert len(sent) % 2 == 0 and len(sent) < 200_000
    assert zlib.decompress(sent, -zlib.MAX_WBITS) == expected
    assert all(h.closed for h in store.handles)


def test_a_held_object_sent_as_stored_is_cut_within_the_pdu() -> None:
    """A small Deflated object takes the streamed path too; to a destination that accepted
    Deflated it goes as stored, in fragments within the peer's maximum PDU."""
    store = ClosingStore()
    stored = _large(store, 2_000_000, DeflatedExplicitVRLittleEndian, streamed=False)
    store.objects["k"] = store.objects["k"][:stored.dataset_offset] + os.urandom(50_000)
    stored = VerifiedObject(stored.ref, len(store.objects["k"]), stored.dataset_offset,
                            data=store.objects["k"])
    dul = FakeDUL()
    try:
        _send(FakeDIMSE(dul, 16382), stored, [], deflated=True)
        deadline = time.monotonic() + 10
        while dul.to_provider_queue.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        dul.stop()
    fragments = _fragments(dul)
    assert b"".join(f[1:] for f in fragments) == store.objects["k"][stored.dataset_offset:]
    assert len(fragments) == 4 and max(len(f) - 1 for f in fragments) <= 16382 - 6


def _cut_deflated(store: ClosingStore) -> VerifiedObject:
    """Stored bytes the receive walk would have refused: a deflate stream cut short (2 MB
    of data set inflate from the 3,000 bytes kept to some hundreds of kilobytes)."""
    stored = _large(store, 2_000_000, DeflatedExplicitVRLittleEndian)
    cut = store.objects["k"][:stored.dataset_offset + 3_000]
    store.objects["k"] = cut
    ref = InstanceRef(SC, UID, DeflatedExplicitVRLittleEndian, "k",
                      hashlib.sha256(cut).hexdigest())
    return VerifiedObject(ref, len(cut), stored.dataset_offset, store=store)


def test_a_conversion_refused_before_sending_fails_the_sub_operation_with_nothing_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The conversion is begun before the request is sent (``CHECKED_BEFORE_SENDING``): a
    refusal there raises from the encoder, so pynetdicom counts the sub-operation failed
    and goes on with the association; nothing reached the DUL, logged, the handle closed."""
    store = ClosingStore()
    stored = _cut_deflated(store)
    dataset = StreamedDataset.of(stored)
    encode = stream_send.streamed_encoder(lambda *a: pytest.fail("encoded by pydicom"))
    with pytest.raises(CannotUnderstand):
        encode(dataset, False, True, False)
    assert getattr(stream_send._pending, "pieces", None) is None
    assert store.handles and all(h.closed for h in store.handles)
    assert any("could not be converted" in r.getMessage() for r in caplog.records)


def test_a_conversion_refused_past_the_check_ends_the_sub_operation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past what was checked, the peer has part of a data set: as for a store that fails
    midway, no response (the association is aborted by pynetdicom), the handle closed."""
    monkeypatch.setattr(stream_send, "CHECKED_BEFORE_SENDING", 1)
    monkeypatch.setattr(stream_send, "FRAGMENT", 16_384)
    store = ClosingStore()
    stored = _cut_deflated(store)
    dul = FakeDUL()
    dimse = FakeDIMSE(dul, 16382)
    try:
        _send(dimse, stored, [])
    finally:
        dul.stop()
    assert dul.sent[1:]  # the command set, and part of the data set
    assert dimse.msg_queue.get_nowait() == (None, None)
    assert all(h.closed for h in store.handles)


def test_a_store_that_cannot_give_the_first_piece_fails_the_sub_operation() -> None:
    """Read before the request is sent: an object the store cannot give now (gone, its
    bytes changed within the first piece) fails its sub-operation with nothing sent."""
    store = ClosingStore()
    stored = _large(store)
    data = store.objects["k"]
    store.objects["k"] = data[:-1] + bytes([data[-1] ^ 0xFF])  # changed since its check
    encode = stream_send.streamed_encoder(lambda *a: pytest.fail("encoded by pydicom"))
    with pytest.raises(OutOfResources):
        encode(StreamedDataset.of(stored), False, True, False)
    del store.objects["k"]
    with pytest.raises(OutOfResources) as gone:  # not the KeyError: pynetdicom logs it
        encode(StreamedDataset.of(stored), False, True, False)
    assert "k" not in str(gone.value).split()
    assert all(h.closed for h in store.handles)
    assert getattr(stream_send._pending, "pieces", None) is None


def test_an_association_that_ends_midway_stops_the_stream_at_once() -> None:
    store = ClosingStore()
    stored = _large(store)
    dul = FakeDUL(alive_for=5)
    dimse = FakeDIMSE(dul, 16382)
    try:
        _send(dimse, stored, [])
    finally:
        dul.stop()

    assert len(dul.sent) == 5
    assert dul.to_provider_queue.qsize() <= stream_send.QUEUE_DEPTH
    assert all(h.closed for h in store.handles)  # the store's handle is released
    assert dimse.msg_queue.get_nowait() == (None, None)  # send_c_store: no response


def test_other_messages_and_other_encodings_are_not_streamed() -> None:
    store = ClosingStore()
    stored = _large(store)
    dataset = StreamedDataset.of(stored)
    encoded: list[Dataset] = []

    def pydicom_encode(ds: Dataset, *args: Any) -> bytes:
        encoded.append(ds)
        return b"re-encoded"

    encode = stream_send.streamed_encoder(pydicom_encode)
    # The destination accepted only Explicit VR Big Endian: read whole and re-encoded.
    assert encode(dataset, False, False, False) == b"re-encoded"
    assert not isinstance(encoded[0], StreamedDataset)
    assert encoded[0].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert encoded[0].PixelData == bytes(range(256)) * (300_000 // 256)
    # Encapsulated (its encoding reads as Explicit VR Little Endian) is never re-encoded.
    held = _large(store, streamed=False)
    jpeg = StreamedDataset.of(VerifiedObject(
        InstanceRef(SC, UID, JPEGBaseline8Bit, "k", held.ref.sha256), held.size,
        held.dataset_offset, data=store.objects["k"]))
    assert encode(jpeg, True, True, False) == b"re-encoded"
    assert encode(Dataset(), True, True, False) == b"re-encoded"  # anything else
    # A message the encoder left nothing for goes to pynetdicom's send_msg.
    sent: list[Any] = []
    sender = stream_send.streamed_sender(lambda *a: sent.append(a))
    sender(object(), _request(), 1)
    assert len(sent) == 1


def test_the_stand_in_carries_what_pynetdicom_reads() -> None:
    stored = _large(ClosingStore())
    dataset = StreamedDataset.of(stored)
    assert dataset.SOPClassUID == SC and dataset.SOPInstanceUID == UID
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert dataset._mimic_encoding == (False, True, False)
    assert "PixelData" not in dataset  # nothing of the object is parsed


def test_a_held_pending_c_get_response_goes_before_a_streamed_object() -> None:
    """A pending C-GET response held for the next message (``direct_response_sender``) is
    sent before a C-STORE request streamed from the store, not after it."""
    from mimic_server.codec.command_set import EncodedPData

    store = ClosingStore()
    stored = _large(store)
    dul = FakeDUL()
    dimse = FakeDIMSE(dul, 16382)
    held = EncodedPData(b"a pending C-GET response", 1)
    dimse.__dict__["_mimic_held_response"] = (held.encoded, held.pdus)
    _send_and_drain(dimse, stored)
    first = dul.sent[0]
    assert isinstance(first, EncodedPData) and first.encoded == held.encoded
    assert all(not isinstance(p, EncodedPData) for p in dul.sent[1:])
    assert "_mimic_held_response" not in dimse.__dict__


@pytest.mark.parametrize("change", ["flip", "truncate", "extend"])
def test_bytes_changed_after_the_check_are_never_sent_whole(change: str) -> None:
    """The object changes in the store between its check and its sending, past its first
    piece: the stream stops before its last fragment (no 0x02) and answers "no response"
    (the association is aborted), the handle released."""
    store = ClosingStore()
    stored = _large(store, 3 * stream_send.FRAGMENT)
    data = bytearray(store.objects["k"])
    if change == "flip":
        data[-100] ^= 0xFF
    elif change == "truncate":
        del data[-50_000:]
    else:
        data += b"\x00\x00"
    store.objects["k"] = bytes(data)
    dul = FakeDUL()
    dimse = FakeDIMSE(dul, 16382)
    _send_and_drain(dimse, stored)

    fragments = [v for p in dul.sent for _, v in p.presentation_data_value_list
                 if not v[0] & 0x01]
    assert fragments and all(f[0] == 0x00 for f in fragments)  # never the last
    assert dimse.msg_queue.get_nowait() == (None, None)
    assert all(h.closed for h in store.handles)


def test_a_verified_stream_from_an_offset_is_the_object_from_there() -> None:
    store = ClosingStore()
    stored = _large(store)
    data = store.objects["k"]
    for start in (0, 1, stored.dataset_offset, 70_000):
        assert b"".join(stored.chunks(start, 4096)) == data[start:]
    assert stored.read() == data
    store.objects["k"] = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(OutOfResources):
        stored.read()


def test_a_large_object_changed_since_its_check_is_a_failure_when_read_whole(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """Read whole (a conversion, C-GET with streaming off) or copied to a file (WADO-RS
    metadata, bulk data and rendering): the same check; a failed sub-operation or a 500,
    never the changed bytes, and no copy left behind."""
    from mimic_server.dimse import retrieve
    from mimic_server.web.dicomweb.context import DicomWebContext
    from mimic_server.web.dicomweb.errors import WebError
    from mimic_server.web.dicomweb.wado import copied

    store = ClosingStore()
    stored = _large(store)
    data = store.objects["k"]
    store.objects["k"] = data[:-1] + bytes([data[-1] ^ 0xFF])  # changed since its check
    spool = tmp_path / "spool"
    ctx = DicomWebContext(None, store, None, None, None,  # type: ignore[arg-type]
                          ingest=SimpleNamespace(spool_dir=spool))
    with pytest.raises(WebError) as refused:
        copied(ctx, stored)
    assert refused.value.status == 500
    assert list(spool.iterdir()) == []  # anonymous, and closed
    monkeypatch.setattr(stream_send, "enabled", False)
    monkeypatch.setattr(retrieve, "open_verified", lambda *a, **k: stored)
    assert retrieve.read_verified(store, stored.ref) is None


def test_a_begun_object_never_sent_has_its_handle_closed_by_the_next_send() -> None:
    """The encoder began the object (its first piece read, the handle open), and the next
    message is another: the handle is closed then, not left to garbage collection."""
    import gc

    store = ClosingStore()
    stored = _large(store, 3 * stream_send.FRAGMENT)
    encode = stream_send.streamed_encoder(lambda *a: pytest.fail("encoded by pydicom"))
    sent: list[Any] = []
    gc.disable()
    try:
        opened = len(store.handles)  # the check's pass, closed
        assert encode(StreamedDataset.of(stored), False, True, False) == b""
        [begun] = store.handles[opened:]
        assert not begun.closed
        other = _request()
        other.AffectedSOPInstanceUID = "1.2.3.999"
        stream_send.streamed_sender(lambda *a: sent.append(a))(None, other, 3)
        assert begun.closed
    finally:
        gc.enable()
    assert len(sent) == 1


@pytest.mark.parametrize("answered", [True, False], ids=["answered-send", "its fallback"])
def test_an_object_the_encoder_failed_is_audited_as_not_transferred(
    monkeypatch: pytest.MonkeyPatch, answered: bool,
) -> None:
    """Refused before anything was sent: failed in the audit's Instances Transferred,
    also where the fence's ``answered-send`` is off and "encoded" stands for "sent"."""
    from mimic_server.dimse import audited

    monkeypatch.setattr(audited, "answered_send_in_use", lambda: answered)
    store = ClosingStore()
    dataset = StreamedDataset.of(_cut_deflated(store))
    encode = stream_send.streamed_encoder(lambda *a: pytest.fail("encoded by pydicom"))
    with pytest.raises(CannotUnderstand):
        encode(dataset, False, True, False)
    assert dataset._mimic_encoded and dataset._mimic_refused
    sent = TransferTally()
    assert audited._tally(dataset, sent, audited._Matches()) == 1
    assert sent.sent == {} and sent.total_failed == 1
