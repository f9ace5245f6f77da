"""codec/header_stream.py and ``wado.metadata_header``: the metadata of an object above
8 MiB or Deflated, from one pass of its pieces with its top-level bulk skipped, is the
document the spooled copy gave, with no copy made."""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from mimic_server.archive.read import VerifiedObject
from mimic_server.codec import header_stream
from mimic_server.codec.file_meta import encode_file_meta
from mimic_server.codec.header_stream import without_bulk
from mimic_server.codec.structure import check_structure
from mimic_server.errors import CannotUnderstand
from mimic_server.query.finder import InstanceRef
from mimic_server.web.dicomweb import wado
from mimic_server.web.dicomweb.wado import header_of, metadata_json, walked_header
from tests.data import Storable, storable_files
from tests.unit.test_wado_large import (
    SECONDARY_CAPTURE,
    URL,
    MiB,
    _client,
    _get,
    _large,
    _readable,
)

JSON = "application/dicom+json"


def _object(data: bytes, syntax: str) -> VerifiedObject:
    offset = 144 + int.from_bytes(data[140:144], "little")
    ref = InstanceRef(SECONDARY_CAPTURE, "1.2.3", syntax, "key", hashlib.sha256(data).hexdigest())
    return VerifiedObject(ref, len(data), offset, data=data)


def _spooled(data: bytes, syntax: str) -> dict[str, Any]:
    """The document as the spooled copy gave it (``wado.copied``, then ``header_of``)."""
    with _readable(data, syntax) as source:
        return metadata_json(header_of(source), URL)


def _walked(data: bytes, syntax: str) -> dict[str, Any]:
    ds = walked_header(_object(data, syntax), syntax == DeflatedExplicitVRLittleEndian)
    assert ds is not None, "not walked"
    return metadata_json(ds, URL)


@pytest.mark.parametrize("item", storable_files(), ids=lambda f: f.path.name)
def test_every_shipped_file_gives_the_document_of_its_spooled_copy(item: Storable) -> None:
    data = item.path.read_bytes()
    try:
        expected = _spooled(data, item.transfer_syntax_uid)
    except Exception:
        pytest.skip("pydicom cannot write this file's JSON")
    assert _walked(data, item.transfer_syntax_uid) == expected


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "SC_rgb_rle.dcm",
                                  "nested_priv_SQ.dcm", "rtplan.dcm", "emri_small.dcm"])
def test_however_the_pieces_are_cut_the_walk_is_the_same(name: str) -> None:
    data = Path(str(pydicom.data.get_testdata_file(name))).read_bytes()
    syntax = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta[
        "TransferSyntaxUID"].value
    if syntax.is_deflated:
        pytest.skip("walked inflated: the same pieces as any other")
    dataset = data[_object(data, syntax).dataset_offset:]
    whole = without_bulk(iter([dataset]), syntax.is_implicit_VR, syntax.is_little_endian)
    for size in (1, 7, 64, 4093):
        pieces = iter([dataset[i:i + size] for i in range(0, len(dataset), size)])
        cut = without_bulk(pieces, syntax.is_implicit_VR, syntax.is_little_endian)
        assert (cut.kept, cut.skipped) == (whole.kept, whole.skipped), size


def _saved(ds: Dataset, syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SECONDARY_CAPTURE, "1.2.3"
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _image(rows: int = 512) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, "1.2.3"
    ds.PatientID, ds.Modality = "WALK", "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(range(256)) * (rows * rows * 2 // 256)
    ds["PixelData"].VR = "OW"
    return ds


def _after_pixel_data() -> tuple[bytes, str]:
    ds = _image()
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 100_000)  # Data Set Trailing Padding: skipped
    return _saved(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian


def _implicit_long_text() -> tuple[bytes, str]:
    ds = _image()
    ds.ImageComments = "c" * 70_000  # LT past 64 KiB: a URI; in implicit VR only
    ds.add_new(0x00091010, "OB", b"\1" * 70_000)  # private, its VR unknown here: kept
    return _saved(ds, ImplicitVRLittleEndian), ImplicitVRLittleEndian


def _encapsulated(fragment: int) -> tuple[bytes, str]:
    ds = _image(64)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.NumberOfFrames = 2
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\1" * fragment + b"\xff\xd9"] * 2)
    ds["PixelData"].VR = "OB"
    return _saved(ds, JPEGBaseline8Bit), JPEGBaseline8Bit


def _big_endian() -> tuple[bytes, str]:
    return _saved(_image(), ExplicitVRBigEndian), ExplicitVRBigEndian


def _sequences() -> tuple[bytes, str]:
    """A sequence of undefined length (pydicom writes them so) whose item holds a large
    binary value (inline: nested), and a large UN (a URI, skipped)."""
    ds = _image()
    inner = Dataset()
    inner.PixelData = b"\2" * 80_000
    inner["PixelData"].VR = "OB"
    inner.is_undefined_length_sequence_item = True
    ds.IconImageSequence = Sequence([inner])
    ds["IconImageSequence"].is_undefined_length = True
    ds.add_new(0x00204000, "UN", b"c" * 70_000)
    data = _saved(ds, ExplicitVRLittleEndian)
    assert b"\xfe\xff\xdd\xe0" in data  # the sequence's delimiter: undefined length
    return data, ExplicitVRLittleEndian


def _deflated() -> tuple[bytes, str]:
    return _saved(_image(), DeflatedExplicitVRLittleEndian), DeflatedExplicitVRLittleEndian


CASES = {
    "elements after Pixel Data": (_after_pixel_data, {0x7FE00010, 0xFFFCFFFC}),
    "implicit, long text": (_implicit_long_text, {0x7FE00010, 0x00204000}),
    "encapsulated, large fragments": (lambda: _encapsulated(70_000), {0x7FE00010}),
    "encapsulated, small fragments": (lambda: _encapsulated(1_000), set()),
    "big endian": (_big_endian, {0x7FE00010}),
    "sequences": (_sequences, {0x7FE00010, 0x00204000}),
    "deflated": (_deflated, {0x7FE00010}),
}


@pytest.mark.parametrize("case", CASES)
def test_skipped_are_the_values_the_metadata_gives_a_uri(case: str) -> None:
    """What is skipped is never held, and the document is the spooled copy's."""
    make, skipped = CASES[case]
    data, syntax = make()
    assert _walked(data, syntax) == _spooled(data, syntax)
    uid = pydicom.uid.UID(syntax)
    if uid.is_deflated:
        return
    walked = without_bulk(iter([data[144 + int.from_bytes(data[140:144], "little"):]]),
                          uid.is_implicit_VR, uid.is_little_endian)
    assert {int(raw.tag) for raw in walked.skipped} == skipped
    assert all(raw.value is None for raw in walked.skipped)


def _uris_as_tags(node: Any) -> Any:
    """A document with each BulkDataURI cut to what follows ``/bulkdata/``."""
    if isinstance(node, list):
        return [_uris_as_tags(each) for each in node]
    if isinstance(node, dict):
        return {k: v.rsplit("/bulkdata/", 1)[1] if k == "BulkDataURI" else _uris_as_tags(v)
                for k, v in node.items()}
    return node


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian],
                         ids=["explicit", "deflated"])
def test_a_large_object_is_walked_not_copied(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                             syntax: str) -> None:
    """64 MiB of pixels above 8 MiB, and Deflated (inflating to 64 MiB): the document,
    with no copy made (before, written whole to the spool directory per request)."""
    def no_copy(*args: Any) -> Any:
        raise AssertionError("copied to the spool directory")

    data, _ds = _large(syntax=syntax, text=5000)
    expected = _spooled(data, syntax)
    monkeypatch.setattr(VerifiedObject, "copied", no_copy)
    monkeypatch.setattr(wado, "inflated_copy", no_copy)
    answer, peak = _get(_client(data, tmp_path, syntax), "/metadata", JSON)
    assert answer.status_code == 200, answer.text
    assert _uris_as_tags(answer.json()) == [_uris_as_tags(expected)]
    assert peak < 16 * MiB, f"{peak / MiB:.1f} MiB"


def test_a_data_set_the_walk_does_not_vouch_for_goes_the_spool_way(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """More to keep than ``MAX_KEPT`` (here 1 KiB): the document as before, logged."""
    monkeypatch.setattr(header_stream, "MAX_KEPT", 1024)
    data, _ds = _large(text=5000)
    with caplog.at_level(logging.INFO, logger="mimic_server.web.dicomweb.wado"):
        answer, _peak = _get(_client(data, tmp_path), "/metadata", JSON)
    assert answer.status_code == 200
    assert answer.json()[0]["00204000"]["Value"] == ["c" * 5000]
    assert any("spooled copy" in r.getMessage() for r in caplog.records)


def test_an_object_changed_since_its_check_is_a_500(tmp_path: Any) -> None:
    """Hashed again as it is walked: bytes changed since the check are never described."""
    data, _ds = _large()
    client = _client(data, tmp_path)
    store = client.mimic_store  # type: ignore[attr-defined]
    [key] = list(store.objects)
    store.objects[key] = data[:-1] + bytes([data[-1] ^ 0xFF])
    answer, _peak = _get(client, "/metadata", JSON)
    assert answer.status_code == 500


def test_the_walk_skips_by_the_metadatas_rules() -> None:
    assert wado._BINARY_VRS <= header_stream.URI_VRS
    assert header_stream.SKIPPED_ABOVE == wado.LARGEST_INLINE_VALUE


def test_a_delimiter_at_the_top_level_is_not_vouched_for() -> None:
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0)
    with pytest.raises(header_stream.NotWalked):
        without_bulk(iter([b"\x10\x00\x20\x00LO\x02\x00P " + item]), False)



def _element(tag: int, value: bytes, vr: str | None = None, length: int | None = None) -> bytes:
    """One element, little endian: implicit VR where ``vr`` is None."""
    n = len(value) if length is None else length
    group, element = tag >> 16, tag & 0xFFFF
    if vr is None:
        return struct.pack("<HHL", group, element, n) + value
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"):
        return struct.pack("<HH2s2xL", group, element, vr.encode(), n) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), n) + value


_UNDEFINED = 0xFFFFFFFF
_FRAGMENTS = struct.pack("<HHL", 0xFFFE, 0xE000, 70_000) + b"\1" * 70_000 + struct.pack(
    "<HHL", 0xFFFE, 0xE0DD, 0)
_UIDS_IMPLICIT = (_element(0x00080016, SECONDARY_CAPTURE.encode() + b"\0")
                  + _element(0x00080018, b"1.2.3\0"))
_UIDS_EXPLICIT = (_element(0x00080016, SECONDARY_CAPTURE.encode() + b"\0", "UI")
                  + _element(0x00080018, b"1.2.3\0", "UI"))


def _part10(dataset: bytes, syntax: str) -> bytes:
    return encode_file_meta(SECONDARY_CAPTURE, "1.2.3", syntax, "") + dataset


REVIEWED = {
    # pydicom tells implicit from explicit by the first element: never skipped, even of
    # undefined length (its second element's length here reads as an explicit VR, "BB")
    "first element of undefined length": (
        _element(0x00080001, _FRAGMENTS, length=_UNDEFINED)
        + _UIDS_IMPLICIT + _element(0x00080070, b"M" * 0x4242), ImplicitVRLittleEndian),
    # values of undefined length whose VR gets no URI are read by the metadata: kept
    "UR of undefined length": (
        _UIDS_EXPLICIT + _element(0x00081190, _FRAGMENTS, "UR", _UNDEFINED),
        ExplicitVRLittleEndian),
    "implicit LO of undefined length": (
        _UIDS_IMPLICIT + _element(0x00080080, _FRAGMENTS, length=_UNDEFINED),
        ImplicitVRLittleEndian),
    # what pydicom reads to settle an ambiguous VR is never skipped, however long (fuzzing:
    # a skipped one gave it the kept bytes' start to read)
    "a long Pixel Representation": (
        _UIDS_IMPLICIT + _element(0x00189810, b"\1\0" * 1000)  # US or SS
        + _element(0x00280103, b"\1\0" * 35_000), ImplicitVRLittleEndian),
    "a long LUT Descriptor": (
        _UIDS_IMPLICIT + _element(0x00283002, struct.pack("<HHH", 4096, 0, 16) + b"\0" * 70_000)
        + _element(0x00283006, b"\1\0" * 40_000), ImplicitVRLittleEndian),  # US or OW
    # LUT Data skipped, unsettled (no Pixel Representation): its VR as the copy's (fuzzing)
    "LUT Data without what settles it": (
        _UIDS_IMPLICIT + _element(0x00283002, b"\0\1" * 1000)
        + _element(0x00283006, b"\1\0" * 40_000) + _element(0x7FE00010, b"\0" * 4),
        ImplicitVRLittleEndian),
    # an element that overruns the defined-length item holding it (which the receive walk
    # does not look into): pydicom reads past the item, so the kept bytes parse to other
    # elements (the spool way; fuzzing)
    "an element overrunning its item": (
        _UIDS_EXPLICIT + _element(
            0x00081115, struct.pack("<HHL", 0xFFFE, 0xE000, 20)
            + _element(0x00420011, b"\0" * 8, "OB", 32)
            + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0), "SQ", _UNDEFINED)
        + _element(0x00090010, b"ACME", "LO")
        + _element(0x00420012, b"PPPP" + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
                   + _element(0x00091030, b"\1" * 70_000, "OB"), "OB")
        + _element(0x00431000, b"PPPP" + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
                   + _element(0x00100020, b"ID", "LO"), "OB"),
        ExplicitVRLittleEndian),
    # a tag twice, the large one first: pydicom keeps the last (the spool way)
    "a tag twice": (
        _UIDS_EXPLICIT + _element(0x00090010, b"ACME", "LO")
        + _element(0x00091010, b"\1" * 70_000, "OB") + _element(0x00091010, b"PP", "OB"),
        ExplicitVRLittleEndian),
}


@pytest.mark.parametrize("case", REVIEWED)
def test_the_reviews_and_fuzzings_data_sets_give_the_document_of_their_copy(case: str) -> None:
    """Walked to the same document, or (a tag twice) left to the spool way."""
    dataset, syntax = REVIEWED[case]
    if case == "a tag twice":  # refused on receipt now (PS3.5 7.1), but stored before
        with pytest.raises(CannotUnderstand, match="out of tag order"):
            check_structure(memoryview(dataset), UID(syntax))
    else:
        check_structure(memoryview(dataset), UID(syntax))  # the receive walk takes it
    data = _part10(dataset, syntax)
    ds = walked_header(_object(data, syntax), False)
    if case in ("a tag twice", "an element overrunning its item"):
        assert ds is None
        return
    assert ds is not None
    assert metadata_json(ds, URL) == _spooled(data, syntax)


def test_a_value_too_large_to_keep_is_never_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept bytes are counted before a value is read: a private element of 8 MiB (its VR
    unknown in implicit VR, so kept), a defined-length sequence past ``MAX_KEPT``, or one of
    undefined length not ended within ``SEQUENCE_AHEAD``, is not held to find out."""
    monkeypatch.setattr(header_stream, "MAX_KEPT", MiB)
    monkeypatch.setattr(header_stream, "SEQUENCE_AHEAD", MiB // 2)
    value = b"\1" * (8 * MiB)
    item = struct.pack("<HHL", 0xFFFE, 0xE000, len(value)) + value
    for dataset, implicit in (
        (_UIDS_IMPLICIT + _element(0x00091010, value), True),
        (_UIDS_EXPLICIT + _element(0x00089215, item, "SQ"), False),
        (_UIDS_EXPLICIT + _element(0x00089215, item + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0),
                                   "SQ", _UNDEFINED), False),
    ):
        pieces = [dataset[i:i + 65536] for i in range(0, len(dataset), 65536)]
        tracemalloc.start()
        with pytest.raises(header_stream.NotWalked):
            without_bulk(iter(pieces), implicit)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 4 * MiB, f"{peak / MiB:.1f} MiB"


def test_a_large_fragment_skipped_is_never_held() -> None:
    """Encapsulated Pixel Data in one fragment of 64 MiB (a single-frame JPEG 2000, say):
    let go before it is read, not after (fuzzing: held whole first)."""
    fragments = (struct.pack("<HHL", 0xFFFE, 0xE000, 0)
                 + struct.pack("<HHL", 0xFFFE, 0xE000, 64 * MiB) + bytes(64 * MiB)
                 + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
    data = _UIDS_EXPLICIT + _element(0x7FE00010, fragments, "OB", _UNDEFINED)
    pieces = [data[i:i + MiB] for i in range(0, len(data), MiB)]  # the store's pieces
    del data, fragments
    tracemalloc.start()
    walked = without_bulk(iter(pieces), False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [int(raw.tag) for raw in walked.skipped] == [0x7FE00010]
    assert peak < 4 * MiB, f"{peak / MiB:.1f} MiB"
