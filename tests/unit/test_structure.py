"""The structural walk: every shipped file walks to its end; damaged data sets are refused."""

from __future__ import annotations

import struct
import sys
import zlib

import pytest
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from mimic_server.codec import structure
from mimic_server.codec.nesting import MAX_SEQUENCE_DEPTH, NestedTooDeep
from mimic_server.codec.structure import StructureWalk, check_structure
from mimic_server.errors import CannotUnderstand, Status
from tests.data import Storable, ct_small, storable_files
from tests.malformed import DAMAGES, damaged, element_headers

EXPLICIT_LE = UID(ExplicitVRLittleEndian)


def _ct_small_dataset() -> bytes:
    return next(f for f in storable_files() if f.path == ct_small()).dataset_bytes()


@pytest.mark.parametrize("item", storable_files(), ids=lambda f: f.path.name)
def test_every_shipped_file_walks_to_its_end(item: Storable) -> None:
    check_structure(memoryview(item.dataset_bytes()), UID(item.transfer_syntax_uid))


@pytest.mark.parametrize("name", DAMAGES)
def test_damage_after_pixel_data_is_refused(name: str) -> None:
    data = damaged(_ct_small_dataset())[name]
    with pytest.raises(CannotUnderstand) as refused:
        check_structure(memoryview(data), EXPLICIT_LE)
    assert refused.value.status == Status.CANNOT_UNDERSTAND
    assert len(str(refused.value)) <= 64  # it is the Error Comment


def test_a_cut_inside_any_element_is_refused_and_between_elements_is_not() -> None:
    data = _ct_small_dataset()
    for header in element_headers(data):
        end = header.value_start + header.length
        check_structure(memoryview(data[:end]), EXPLICIT_LE)  # a shorter, whole data set
        for cut in {header.start + 3, header.value_start - 1, end - 1} - {header.start}:
            if cut > header.start:
                with pytest.raises(CannotUnderstand):
                    check_structure(memoryview(data[:cut]), EXPLICIT_LE)


@pytest.mark.parametrize("chunk", [1, 5, 13, 4096])
@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "explicit_VR-UN.dcm", "ExplVR_BigEnd.dcm", "rtdose_rle.dcm"]
)
def test_chunks_walk_as_one_piece(name: str, chunk: int) -> None:
    """The Deflated path feeds the walk in chunks: any split gives the same verdict."""
    item = next(f for f in storable_files() if f.path.name == name)
    data, syntax = item.dataset_bytes(), UID(item.transfer_syntax_uid)
    for sample in (data, data[:-1]):
        walk = StructureWalk(syntax.is_implicit_VR, syntax.is_little_endian)
        try:
            for start in range(0, len(sample), chunk):
                walk.feed(sample[start : start + chunk])
            walk.close()
            chunked = None
        except CannotUnderstand as exc:
            chunked = str(exc)
        try:
            check_structure(memoryview(sample), syntax)
            whole = None
        except CannotUnderstand as exc:
            whole = str(exc)
        assert chunked == whole
    assert whole is not None  # the cut one


def test_deep_nesting_needs_no_recursion_and_is_bounded() -> None:
    """Undefined lengths nested to ``MAX_SEQUENCE_DEPTH`` are walked; past it, however deep
    (five times Python's recursion limit), refused where the bound is passed."""
    open_ = b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    close = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    depth = MAX_SEQUENCE_DEPTH
    check_structure(memoryview(open_ * depth + close * depth), EXPLICIT_LE)
    with pytest.raises(CannotUnderstand, match="not closed"):
        check_structure(memoryview(open_ * depth + close * (depth - 1)), EXPLICIT_LE)
    deep = sys.getrecursionlimit() * 5
    with pytest.raises(NestedTooDeep, match="nested deeper than"):
        check_structure(memoryview(open_ * deep + close * deep), EXPLICIT_LE)


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def test_deflated_data_set_walks_inflated() -> None:
    deflated = UID(DeflatedExplicitVRLittleEndian)
    data = _ct_small_dataset()
    check_structure(memoryview(_deflate(data)), deflated)
    check_structure(memoryview(_deflate(data) + b"\x00"), deflated)  # even length pad
    for broken in (
        _deflate(data)[:-20],  # the stream is cut
        _deflate(data) + b"garbage!!",  # bytes after it
        _deflate(data[:-3]),  # a whole stream of a damaged data set
        b"\xff" * 64,  # not deflate at all
    ):
        with pytest.raises(CannotUnderstand):
            check_structure(memoryview(broken), deflated)


def test_deflated_data_set_is_inflated_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(structure, "MAX_INFLATED", 1 << 20)
    bomb = _deflate(b"\xfc\xff\xfc\xffOB\x00\x00" + struct.pack("<L", 8 << 20) + bytes(8 << 20))
    with pytest.raises(CannotUnderstand, match="inflates beyond"):
        check_structure(memoryview(bomb), UID(DeflatedExplicitVRLittleEndian))


@pytest.mark.parametrize("group", [0x0000, 0x0002])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1",
                                    "1.2.840.10008.1.2.2"])
def test_command_or_file_meta_elements_in_a_data_set_are_refused(group: int, syntax: str) -> None:
    """pydicom reads a data set holding them as something else and stops early (found by the
    fuzz layer: a big endian data set whose first tag became (0000,0000))."""
    uid = UID(syntax)
    order = "<" if uid.is_little_endian else ">"
    if uid.is_implicit_VR:
        element = struct.pack(f"{order}HHL", group, 0x0000, 4) + struct.pack(f"{order}L", 8)
    else:
        element = struct.pack(f"{order}HH2sH", group, 0x0000, b"UL", 4) + struct.pack(
            f"{order}L", 8)
    patient = struct.pack(f"{order}HH", 0x0010, 0x0020)
    patient += (b"" if uid.is_implicit_VR else b"LO") + struct.pack(
        f"{order}{'L' if uid.is_implicit_VR else 'H'}", 4) + b"ID1 "
    with pytest.raises(CannotUnderstand, match=rf"\({group:04X},0000\) in the data set"):
        check_structure(memoryview(element + patient), uid)
    check_structure(memoryview(patient), uid)  # the same without it is fine


def test_deflated_data_set_whose_output_outlasts_its_input_walks() -> None:
    """2 MiB of zeros deflate to a few KiB: zlib consumes all input in the first call while
    most of the output is still held back by the chunk cap; the stream is whole."""
    data = b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<L", 2 << 20) + bytes(2 << 20)
    check_structure(memoryview(_deflate(data)), UID(DeflatedExplicitVRLittleEndian))
    with pytest.raises(CannotUnderstand, match="truncated"):
        check_structure(memoryview(_deflate(data)[:-4]), UID(DeflatedExplicitVRLittleEndian))


def test_an_item_delimiter_of_non_zero_length_is_refused_in_explicit_vr() -> None:
    """Its length is 0 (PS3.5 7.5.2); in explicit VR pydicom reads its length as a VR and
    a length, and past them where they spell OB or UN: an object it cannot read back, whose
    JSON the archive wrote all the same (as review found)."""
    item = b"\x08\x00\x00\x01SH\x04\x00CODE"
    def data_set(delimiter_length: bytes) -> bytes:
        return (b"\x08\x00\x10\x11SQ\x00\x00\xff\xff\xff\xff"
                + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + item
                + b"\xfe\xff\x0d\xe0" + delimiter_length
                + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    check_structure(memoryview(data_set(b"\x00\x00\x00\x00")), UID(ExplicitVRLittleEndian))
    for length in (b"OB\x00\x00", b"\x01\x00\x00\x00"):
        with pytest.raises(CannotUnderstand, match="non-zero length"):
            check_structure(memoryview(data_set(length)), UID(ExplicitVRLittleEndian))


def _el(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_elements_in_ascending_tag_order_each_once(chunk: int) -> None:
    """PS3.5 7.1. An element after Pixel Data (where the header read stops) that repeats one
    before it, or comes out of order, is refused: pydicom reads the last of a repeated tag,
    so the index would say one SOP Instance UID or Patient ID and the stored object another.
    So is one out of order within an item of undefined length; fed in any chunks alike (an
    element header split between two chunks is compared once)."""
    header = _el(0x00080018, b"UI", b"1.2.3.4\0") + _el(0x00100020, b"LO", b"PID1")
    pixels = b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<L", 4) + b"\0" * 4
    item_open = b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    item_close = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    code = _el(0x00080100, b"SH", b"C1") + _el(0x00080102, b"SH", b"DCM ")

    def verdict(data: bytes) -> str | None:
        walk = StructureWalk(implicit=False, little=True)
        try:
            for start in range(0, len(data), chunk):
                walk.feed(data[start : start + chunk])
            walk.close()
        except CannotUnderstand as exc:
            assert exc.status == Status.CANNOT_UNDERSTAND
            return str(exc)
        return None

    # An item's elements start their own order; the data set's goes on after it.
    assert verdict(header + item_open + code + item_close + pixels) is None
    assert verdict(header + pixels + _el(0x00080018, b"UI", b"9.9.9.9\0")) == (
        f"malformed: (0008,0018) out of tag order at byte {len(header + pixels)}")
    assert verdict(header + pixels + pixels) == (
        f"malformed: (7FE0,0010) out of tag order at byte {len(header + pixels)}")
    assert verdict(header + _el(0x00080020, b"DA", b"20240101") + pixels) is not None
    swapped = _el(0x00080102, b"SH", b"DCM ") + _el(0x00080100, b"SH", b"C1")
    assert "(0008,0100) out of tag order" in str(
        verdict(header + item_open + swapped + item_close + pixels))


def test_explicit_vr_bytes_on_an_implicit_vr_syntax_are_refused() -> None:
    """PS3.5 A.1: refused whole, in chunks and on the one-pass path alike. Implicit VR bytes
    under an explicit VR syntax are read as implicit VR, as pydicom reads them (a shipped
    JPEG file is so and is taken: test_every_shipped_file_walks_to_its_end)."""
    from mimic_server.codec.header import read_checked_header

    explicit = _el(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0") + _el(
        0x00100020, b"LO", b"PID1")
    implicit = struct.pack("<HHL", 0x0008, 0x0016, 26) + b"1.2.840.10008.5.1.4.1.1.7\0"
    implicit_vr = UID("1.2.840.10008.1.2")
    why = "explicit VR data set on an Implicit VR transfer syntax"
    with pytest.raises(CannotUnderstand, match=why) as refused:
        check_structure(memoryview(explicit), implicit_vr)
    assert refused.value.status == Status.CANNOT_UNDERSTAND
    with pytest.raises(CannotUnderstand, match=why):
        read_checked_header(memoryview(explicit), implicit_vr)
    walk = StructureWalk(implicit=True, little=True)
    with pytest.raises(CannotUnderstand, match=why):
        for byte in range(len(explicit)):
            walk.feed(explicit[byte : byte + 1])
        walk.close()
    check_structure(memoryview(implicit), implicit_vr)
    for syntax in (EXPLICIT_LE, UID("1.2.840.10008.1.2.4.50")):
        check_structure(memoryview(implicit), syntax)


@pytest.mark.parametrize("deflated", [False, True], ids=["explicit", "deflated"])
def test_a_data_set_of_too_many_elements_and_items_is_refused(
    deflated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every element, item and delimiter header counts: a Deflated data set of 1.5 MB that
    inflates to 131 million empty ones was walked for 30 s of CPU and stored with Success.
    Refused 0xC000 past ``MAX_ELEMENTS``, counted across the chunks a walk is fed."""
    bound = structure.MAX_ELEMENTS
    monkeypatch.setattr(structure, "MAX_ELEMENTS", 1000)
    head = _el(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0") + _el(
        0x00100020, b"LO", b"PID1") + b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<L", 2) + b"\0\0"
    opened = b"\xfd\xff\x10\x10SQ\x00\x00\xff\xff\xff\xff"  # after Pixel Data, in tag order
    closed = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"

    def data_set(items: int) -> memoryview:
        data = head + opened + b"\xfe\xff\x00\xe0\x00\x00\x00\x00" * items + closed
        return memoryview(_deflate(data) if deflated else data)

    syntax = UID(DeflatedExplicitVRLittleEndian) if deflated else EXPLICIT_LE
    check_structure(data_set(1000 - 5), syntax)  # 3 elements, the sequence, its delimiter
    with pytest.raises(CannotUnderstand) as refused:
        check_structure(data_set(1000 - 4), syntax)
    assert refused.value.status == Status.CANNOT_UNDERSTAND
    assert str(refused.value) == "the data set has more than 1000 elements and items"
    assert len(f"the data set has more than {bound} elements and items") <= 64  # Error Comment
