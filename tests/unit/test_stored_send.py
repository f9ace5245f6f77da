"""C-GET / C-MOVE sub-operations of objects held whole: sent as stored without being parsed,
parsed only for a conversion to another transfer syntax, and never handed unparsed to an
encoder that would not send them as stored."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from typing import Any

import pydicom
import pynetdicom.association
import pynetdicom.dsutils
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from mimic_server.archive.read import open_verified
from mimic_server.dimse import stream_send
from mimic_server.dimse.raw_send import StoredDataset, stored_bytes_encoder
from mimic_server.dimse.retrieve import datasets
from mimic_server.errors import CannotUnderstand
from mimic_server.query.finder import InstanceRef
from mimic_server.storage.memory import MemoryStore
from tests.data import ct_small

#: pynetdicom's own encoder (the fence wraps ``pynetdicom.association``'s name for it).
ORIGINAL_ENCODE = pynetdicom.dsutils.encode


def _stored() -> tuple[MemoryStore, InstanceRef, bytes, pydicom.Dataset]:
    data = ct_small().read_bytes()
    parsed = pydicom.dcmread(io.BytesIO(data))
    assert parsed.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    store = MemoryStore()
    store.objects["k"] = data
    ref = InstanceRef(str(parsed.SOPClassUID), str(parsed.SOPInstanceUID),
                      ExplicitVRLittleEndian, "k", hashlib.sha256(data).hexdigest())
    return store, ref, data, parsed


@pytest.fixture
def stored_bytes_send(monkeypatch: pytest.MonkeyPatch) -> Any:
    """pynetdicom's encoder as the fence installs it."""
    encode = stored_bytes_encoder(ORIGINAL_ENCODE)
    monkeypatch.setattr(pynetdicom.association, "encode", encode)
    return encode


def test_an_object_is_sent_as_stored_without_being_parsed(
    stored_bytes_send: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ref, data, parsed = _stored()

    def no_parse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(pydicom, "dcmread", no_parse)
    [sent] = datasets(store, [ref])
    assert isinstance(sent, StoredDataset)
    # What pynetdicom's send_c_store reads to pick the context and write the request.
    assert sent.SOPClassUID == parsed.SOPClassUID
    assert sent.SOPInstanceUID == parsed.SOPInstanceUID
    assert sent.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    verified = open_verified(store, ref)
    assert verified is not None
    assert bytes(stored_bytes_send(sent, False, True, False)) == data[verified.dataset_offset:]
    assert sent._mimic_encoded


def test_a_conversion_to_implicit_vr_re_encodes_the_stored_bytes_unparsed(
    stored_bytes_send: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """To Implicit VR Little Endian (the syntax every destination accepts) the stored
    bytes are re-encoded without pydicom (``codec/implicit_stream.py``), and read back as
    pynetdicom's own conversion."""
    store, ref, _data, parsed = _stored()
    [sent] = datasets(store, [ref])
    theirs = ORIGINAL_ENCODE(parsed, True, True, False)

    def no_parse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(pydicom, "dcmread", no_parse)
    converted = stored_bytes_send(sent, True, True, False)
    monkeypatch.undo()
    ours_read = _read_implicit(converted)
    assert ours_read == _read_implicit(theirs)
    assert ours_read.SOPInstanceUID == parsed.SOPInstanceUID
    assert ours_read.PixelData == parsed.PixelData


def test_a_conversion_from_implicit_vr_re_encodes_the_stored_bytes_unparsed(
    stored_bytes_send: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored in Implicit VR, to a destination that took only Explicit VR Little Endian:
    re-encoded from the stored bytes without pydicom (``codec/explicit_stream.py``), the
    bytes pynetdicom's own conversion gives (CT_small: private elements, US or SS, Pixel
    Data)."""
    _store, _ref, _data, parsed = _stored()
    flat = ORIGINAL_ENCODE(parsed, True, True, False)
    part10 = _part10(flat, ImplicitVRLittleEndian, parsed)
    sent = _sent(part10, ImplicitVRLittleEndian, parsed)
    theirs = ORIGINAL_ENCODE(pydicom.dcmread(io.BytesIO(part10)), False, True, False)

    def no_parse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(pydicom, "dcmread", no_parse)
    ours = stored_bytes_send(sent, False, True, False)
    monkeypatch.undo()
    # Sequences are written with undefined lengths (nothing counted ahead): the same
    # elements, VRs and values once read.
    assert _elements(ours) == _elements(theirs)
    assert ours != theirs and len(_elements(ours)) > 250


def _elements(explicit: bytes) -> list[tuple[int, str, object]]:
    fp = pydicom.filebase.DicomBytesIO(explicit)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    ds = pydicom.filereader.read_dataset(fp, False, True)
    return [(int(e.tag), str(e.VR), e.value if e.VR != "SQ" else None) for e in ds.iterall()]


def _read_implicit(data: bytes) -> pydicom.Dataset:
    back = pydicom.dcmread(io.BytesIO(data), force=True)
    back.file_meta = pydicom.dataset.FileMetaDataset()
    back.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return back


def test_another_conversion_parses_the_object_and_encodes_it_as_pynetdicom_would(
    stored_bytes_send: Any,
) -> None:
    store, ref, _data, parsed = _stored()
    [sent] = datasets(store, [ref])
    converted = stored_bytes_send(sent, False, False, False)  # Explicit VR Big Endian
    assert converted == ORIGINAL_ENCODE(parsed, False, False, False)


def test_an_implicit_vr_data_set_nested_too_deep_is_never_given_to_pydicom(
    stored_bytes_send: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored in Implicit VR, to a destination that took only Explicit VR: re-encoded from
    its stored bytes, and refused where its sequences nest deeper than ``MAX_NESTING``
    (pydicom's encoder could not take them): the sub-operation fails (logged), and pydicom
    never sees it."""
    _store, _ref, _data, parsed = _stored()
    flat = ORIGINAL_ENCODE(parsed, True, True, False)  # the data set in Implicit VR
    pixel = flat.index(b"\xe0\x7f\x10\x00")
    nested = b""
    for _ in range(250):
        nested = (struct.pack("<HHL", 0x0040, 0xA730, len(nested) + 8)
                  + struct.pack("<HHL", 0xFFFE, 0xE000, len(nested)) + nested)
    part10 = _part10(flat[:pixel] + nested + flat[pixel:], ImplicitVRLittleEndian, parsed)
    sent = _sent(part10, ImplicitVRLittleEndian, parsed)

    def no_parse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(pydicom, "dcmread", no_parse)
    with pytest.raises(CannotUnderstand, match="nested too deep"):
        stored_bytes_send(sent, False, True, False)
    assert sent._mimic_refused  # nothing sent: not counted transferred (audited._tally)


def _sent(part10: bytes, syntax: str, parsed: pydicom.Dataset) -> Any:
    """What the retrieve service hands pynetdicom for the Part 10 file ``part10``, stored in
    ``syntax`` (the object of ``parsed``)."""
    store = MemoryStore()
    store.objects["k"] = part10
    ref = InstanceRef(str(parsed.SOPClassUID), str(parsed.SOPInstanceUID), syntax, "k",
                      hashlib.sha256(part10).hexdigest())
    [sent] = datasets(store, [ref])
    return sent


def _part10(dataset: bytes, syntax: str, parsed: pydicom.Dataset) -> bytes:
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = parsed.SOPClassUID
    meta.MediaStorageSOPInstanceUID = parsed.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    head = pydicom.filebase.DicomBytesIO()
    pydicom.filewriter.write_file_meta_info(head, meta)
    return b"\0" * 128 + b"DICM" + head.getvalue() + dataset


def test_a_data_set_nested_too_deep_fails_its_conversion_without_pydicom(
    stored_bytes_send: Any,
) -> None:
    """250 levels of sequences, 5 KB: pydicom's encoder recursed past Python's limit and
    took the process down (a segmentation fault), or wedged its association. Now the
    conversion is refused (the sub-operation fails); sent as stored, it goes as stored."""
    store, ref, data, _parsed = _stored()
    nested = b""
    for _ in range(250):
        nested = (struct.pack("<HH2s2xL", 0x0040, 0xA730, b"SQ", len(nested) + 8)
                  + struct.pack("<HHL", 0xFFFE, 0xE000, len(nested)) + nested)
    verified = open_verified(store, ref)
    assert verified is not None
    offset = verified.dataset_offset
    pixel = data.index(b"\xe0\x7f\x10\x00", offset)
    deep = data[:pixel] + nested + data[pixel:]
    store.objects["k"] = deep
    ref = InstanceRef(ref.sop_class_uid, ref.sop_instance_uid, ExplicitVRLittleEndian, "k",
                      hashlib.sha256(deep).hexdigest())
    [sent] = datasets(store, [ref])
    with pytest.raises(CannotUnderstand, match="nested too deep"):
        stored_bytes_send(sent, True, True, False)
    assert bytes(stored_bytes_send(sent, False, True, False)) == deep[offset:]


def test_without_the_stored_bytes_encoder_the_object_is_parsed_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pynetdicom's own encoder (the fence's patch not in force) re-encodes the dataset it is
    given: it must be the whole object, never the stand-in's few UIDs."""
    monkeypatch.setattr(pynetdicom.association, "encode", ORIGINAL_ENCODE)
    store, ref, _data, parsed = _stored()
    [sent] = datasets(store, [ref])
    assert isinstance(sent, StoredDataset) and sent._mimic_part10 is None
    assert sent.PixelData == parsed.PixelData
    assert ORIGINAL_ENCODE(sent, True, True, False) == ORIGINAL_ENCODE(parsed, True, True, False)


def test_a_deflated_data_set_held_whole_is_converted_without_pydicom(
    stored_bytes_send: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With streaming sends off (the fence's fallback), a Deflated object is held whole;
    pydicom inflated and converted it, and a few hundred bytes deflated nesting 250 levels
    took its encoder past Python's recursion limit. Now it is inflated (and re-encoded) from
    its stored bytes (``dimse/recoders``): to Explicit VR the inflated bytes, to Implicit VR
    refused past the bound, and pydicom never sees it."""
    monkeypatch.setattr(stream_send, "enabled", False)
    _store, _ref, _data, parsed = _stored()
    flat = ORIGINAL_ENCODE(parsed, False, True, False)
    pixel = flat.index(b"\xe0\x7f\x10\x00")
    nested = b""
    for _ in range(250):
        nested = (struct.pack("<HH2s2xL", 0x0040, 0xA730, b"SQ", len(nested) + 8)
                  + struct.pack("<HHL", 0xFFFE, 0xE000, len(nested)) + nested)
    inflated = flat[:pixel] + nested + flat[pixel:]
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = deflater.compress(inflated) + deflater.flush()
    part10 = _part10(deflated, DeflatedExplicitVRLittleEndian, parsed)
    sent = _sent(part10, DeflatedExplicitVRLittleEndian, parsed)
    assert isinstance(sent, StoredDataset)

    def no_parse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(pydicom, "dcmread", no_parse)
    with pytest.raises(CannotUnderstand, match="nested too deep"):
        stored_bytes_send(sent, True, True, False)
    assert stored_bytes_send(sent, False, True, False) == inflated
    assert bytes(stored_bytes_send(sent, False, True, True)) == deflated  # as stored


def test_to_deflated_from_either_vr_encoding_without_pydicom(
    stored_bytes_send: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A destination that took only Deflated gets an object held whole deflated from its
    stored bytes (an Implicit VR one re-encoded first): once inflated, what pynetdicom's own
    conversion gives; padded to an even length."""
    _store, _ref, _data, parsed = _stored()
    for syntax, implicit in ((ExplicitVRLittleEndian, False), (ImplicitVRLittleEndian, True)):
        part10 = _part10(ORIGINAL_ENCODE(parsed, implicit, True, False), syntax, parsed)
        sent = _sent(part10, syntax, parsed)
        theirs = ORIGINAL_ENCODE(pydicom.dcmread(io.BytesIO(part10)), False, True, True)
        monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: pytest.fail("parsed"))
        ours = stored_bytes_send(sent, False, True, True)
        monkeypatch.undo()
        assert len(ours) % 2 == 0
        assert _elements(zlib.decompress(ours, -zlib.MAX_WBITS)) == _elements(
            zlib.decompress(theirs, -zlib.MAX_WBITS))
