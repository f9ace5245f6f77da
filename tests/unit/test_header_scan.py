"""The fast header reader gives exactly pydicom's raw elements, or leaves the file to it."""

from __future__ import annotations

import io
import struct
import tracemalloc

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.filereader import read_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from mimic_server.codec.header import _at_pixel_data, read_checked_header, read_header
from mimic_server.codec.header_scan import (
    BINARY_VRS,
    HEADER_SEQUENCES,
    LARGEST_HEADER_VALUE,
    MAX_HEADER_ELEMENTS,
    ScannedHeader,
    read_little_endian_header,
    scan_header,
)
from mimic_server.errors import OutOfResources
from mimic_server.index.attributes import header_json
from tests.data import Storable, storable_files

LITTLE_ENDIAN = [
    f for f in storable_files()
    if pydicom.uid.UID(f.transfer_syntax_uid).is_little_endian
    and f.transfer_syntax_uid != pydicom.uid.DeflatedExplicitVRLittleEndian
]


def _reference(data: bytes, implicit: bool) -> pydicom.Dataset:
    return read_dataset(io.BytesIO(data), implicit, True, stop_when=_at_pixel_data)


@pytest.mark.parametrize("item", LITTLE_ENDIAN, ids=lambda f: f.path.name)
def test_same_raw_elements_as_pydicom(item: Storable) -> None:
    data = item.path.read_bytes()[item.dataset_offset :]
    implicit = pydicom.uid.UID(item.transfer_syntax_uid).is_implicit_VR
    scanned = scan_header(memoryview(data), implicit)
    if scanned is None:
        return  # undefined lengths or another oddity: pydicom reads this one
    ours = scanned.dataset
    reference = _reference(data, implicit)
    # Bulk elements (longer than LARGEST_HEADER_VALUE, or sequences past HEADER_SEQUENCES)
    # are there, their values not copied.
    for tag in scanned.bulk:  # binary values over 1 KiB, any other over 64 KiB
        length = reference._dict[tag].length  # type: ignore[union-attr]
        vr = reference._dict[tag].VR  # type: ignore[union-attr]
        assert length > (1024 if vr in BINARY_VRS else LARGEST_HEADER_VALUE)
        assert ours._dict[tag].length == 0  # type: ignore[union-attr]
    # A sequence of undefined length pydicom reads at once, into its items; the scan keeps
    # it as one of defined length (its items' bytes): the same items once converted.
    undefined = {t for t, e in reference._dict.items() if not isinstance(e, RawDataElement)}
    assert {t: e for t, e in ours._dict.items() if t not in scanned.bulk | undefined} == {
        t: e for t, e in reference._dict.items() if t not in scanned.bulk | undefined}
    for tag in undefined - scanned.bulk:
        assert ours[tag].VR == "SQ" and ours[tag].value == reference[tag].value
    assert ours.original_encoding == reference.original_encoding
    assert ours.original_character_set == reference.original_character_set


def test_most_shipped_files_take_the_fast_path() -> None:
    taken = sum(
        read_little_endian_header(
            memoryview(f.path.read_bytes()[f.dataset_offset :]),
            pydicom.uid.UID(f.transfer_syntax_uid).is_implicit_VR,
        ) is not None
        for f in LITTLE_ENDIAN
    )
    assert taken >= len(LITTLE_ENDIAN) // 2, (taken, len(LITTLE_ENDIAN))


@pytest.mark.parametrize(
    "data",
    [
        # (0010,0010) PN with a length past the end: truncated
        b"\x10\x00\x10\x00PN\x20\x00Doe^J",
        # a value of undefined length that is not a sequence
        b"\x09\x00\x10\x10OB\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x00\x00\x00\x00"
        b"\xfe\xff\xdd\xe0\x00\x00\x00\x00",
        # an unknown VR
        b"\x10\x00\x10\x00ZZ\x04\x00Doe^",
        # implicit VR bytes under an explicit transfer syntax
        b"\x10\x00\x10\x00\x04\x00\x00\x00Doe^",
    ],
    ids=["truncated", "undefined-length", "unknown-vr", "implicit-bytes"],
)
def test_leaves_the_unusual_to_pydicom(data: bytes) -> None:
    assert read_little_endian_header(memoryview(data), implicit=False) is None


def test_stops_before_pixel_data() -> None:
    data = (
        b"\x28\x00\x10\x00US\x02\x00\x00\x02"  # Rows 512
        b"\xe0\x7f\x10\x00OW\x00\x00\x04\x00\x00\x00\x01\x02\x03\x04"
    )
    header = read_little_endian_header(memoryview(data), implicit=False)
    assert header is not None
    assert list(header.keys()) == [0x00280010]
    assert header.Rows == 512


def _explicit(group: int, number: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHL", group, number, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, number, vr, len(value)) + value


def _implicit(group: int, number: int, value: bytes) -> bytes:
    return struct.pack("<HHL", group, number, len(value)) + value


def _items(*items: bytes) -> bytes:
    return b"".join(struct.pack("<HHL", 0xFFFE, 0xE000, len(item)) + item for item in items)


#: A value of undefined length that is not a sequence: the scan leaves a header holding one
#: to pydicom, under the same bounds.
UNDEFINED_OB = struct.pack("<HH2sHL", 0x0007, 0x1010, b"OB", 0, 0xFFFFFFFF) + _items(b"\x01\x02") \
    + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
NAME = b"Bulk^Header "
BIG = LARGEST_HEADER_VALUE + 2


def test_bulk_values_are_neither_copied_nor_in_the_json() -> None:
    """An Encapsulated Document, a long text, a private blob: longer than 64 KiB, not copied
    out of the data set and left out of the index's JSON; a long sequence is read; a value
    of exactly 64 KiB is kept."""
    item = _explicit(0x0008, 0x0100, b"SH", b"CODE") + _explicit(
        0x0008, 0x0104, b"LO", b"x" * 40_000)
    data = b"".join([
        _explicit(0x0008, 0x0060, b"CS", b"OT"),
        _explicit(0x0008, 0x1140, b"SQ", _items(item, item)),  # 80 KB of sequence: read
        _explicit(0x0009, 0x0010, b"LO", b"MIMIC TEST"),
        _explicit(0x0009, 0x1001, b"OB", bytes(BIG)),
        _explicit(0x0009, 0x1002, b"UT", b"u" * LARGEST_HEADER_VALUE),  # kept: its bound
        _explicit(0x0010, 0x0010, b"PN", NAME),
        _explicit(0x0020, 0x4000, b"UT", b"t" * BIG),
        _explicit(0x0042, 0x0011, b"OB", bytes(BIG)),
    ])
    header = scan_header(memoryview(data), implicit=False)
    assert header is not None
    assert header.bulk == {0x00091001, 0x00204000, 0x00420011}
    assert HEADER_SEQUENCES > 80_000
    assert header.elements[0x00091002][1] == b"u" * LARGEST_HEADER_VALUE
    document = header_json(header)
    assert {"00091001", "00204000", "00420011"}.isdisjoint(document)
    assert document["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Bulk^Header"}]}
    assert len(document["00081140"]["Value"]) == 2
    assert document["00081140"]["Value"][0]["00080104"]["Value"] == ["x" * 40_000]


def test_implicit_vr_bulk_values_and_sequences() -> None:
    """Implicit VR: a sequence is told by its first item's tag, whatever its length."""
    item = _implicit(0x0008, 0x0100, b"CODE") + _implicit(0x0008, 0x0104, b"y" * 70_000)
    data = b"".join([
        _implicit(0x0008, 0x0060, b"OT"),
        _implicit(0x0008, 0x1140, _items(item)),
        _implicit(0x0010, 0x0010, NAME),
        _implicit(0x0042, 0x0011, bytes(BIG)),
    ])
    header = scan_header(memoryview(data), implicit=True)
    assert header is not None
    assert header.bulk == {0x00420011}
    document = header_json(header)
    assert "00420011" not in document
    assert document["00081140"]["Value"][0]["00080104"]["Value"] == ["y" * 70_000]


def test_a_large_value_is_scanned_without_a_copy() -> None:
    data = _explicit(0x0010, 0x0010, b"PN", NAME) + _explicit(
        0x0042, 0x0011, b"OB", bytes(32 << 20))
    view = memoryview(data)
    tracemalloc.start()
    try:
        header = scan_header(view, implicit=False)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert header is not None and header.bulk == {0x00420011}
    assert peak < 1 << 20, peak


def test_sequences_are_read_while_they_fit_their_budget() -> None:
    """In order: one that does not fit what is left is bulk, a smaller one after it is read."""
    small = _items(_explicit(0x0008, 0x0100, b"SH", b"CODE"))
    large = _items(_explicit(0x0009, 0x1001, b"LO", b"z" * 60_000) * (HEADER_SEQUENCES // 60_000))
    data = b"".join([
        _explicit(0x0008, 0x1110, b"SQ", small),
        _explicit(0x0008, 0x1111, b"SQ", large),  # fits (with the first) by a few KB
        _explicit(0x0008, 0x1115, b"SQ", large),  # does not fit: bulk
        _explicit(0x0008, 0x1120, b"SQ", small),  # fits what is left
        _explicit(0x0010, 0x0010, b"PN", NAME),
    ])
    assert len(small) + len(large) <= HEADER_SEQUENCES < len(small) + 2 * len(large)
    header = scan_header(memoryview(data), implicit=False)
    assert header is not None
    assert header.bulk == {0x00081115}
    document = header_json(header)
    assert "00081115" not in document
    assert {"00081110", "00081111", "00081120", "00100010"} <= set(document)


@pytest.mark.parametrize("scanned", [True, False], ids=["scanned", "pydicom"])
def test_a_header_of_too_many_elements_is_refused(scanned: bool) -> None:
    """0xA700 (a bound, as the object size's), whether the scan or pydicom reads it."""
    # pydicom reads a header with an undefined-length value not a sequence: one first
    first = b"" if scanned else UNDEFINED_OB
    many = b"".join(struct.pack("<HH2sH", 0x0009, 0x1000 + n, b"LO", 0)
                    for n in range(MAX_HEADER_ELEMENTS - (2 if scanned else 3)))
    data = first + _explicit(0x0008, 0x0060, b"CS", b"OT") + many
    tail = _explicit(0x0010, 0x0010, b"PN", NAME)
    syntax = UID(ExplicitVRLittleEndian)
    header = read_header(memoryview(data + tail), syntax)  # at the bound
    assert len(header) == MAX_HEADER_ELEMENTS
    extra = _explicit(0x0010, 0x0020, b"LO", b"ID") + _explicit(0x0010, 0x0030, b"DA", b"")
    with pytest.raises(OutOfResources) as refused:
        read_header(memoryview(data + tail + extra), syntax)
    assert refused.value.status == 0xA700
    if scanned:
        with pytest.raises(OutOfResources):
            read_checked_header(memoryview(data + tail + extra), syntax)


UNDEFINED_SQ = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
    "<HHL", 0xFFFE, 0xE0DD, 0)


def test_pydicom_reads_a_header_under_the_same_bounds() -> None:
    small = _items(_explicit(0x0008, 0x0100, b"SH", b"CODE"))
    large = _items(_explicit(0x0009, 0x1001, b"LO", b"z" * 60_000) * (HEADER_SEQUENCES // 60_000))
    data = b"".join([
        UNDEFINED_OB,
        _explicit(0x0008, 0x0060, b"CS", b"OT"),
        _explicit(0x0008, 0x1110, b"SQ", small),
        _explicit(0x0008, 0x1111, b"SQ", large),  # deferred by pydicom, read: it fits
        UNDEFINED_SQ,  # read by pydicom: it fits
        _explicit(0x0008, 0x1150, b"SQ", large),  # does not fit: bulk
        _explicit(0x0009, 0x0010, b"LO", b"MIMIC TEST"),
        _explicit(0x0009, 0x1002, b"OB", bytes(BIG)),
        _explicit(0x0010, 0x0010, b"PN", NAME),
        _explicit(0x0020, 0x4000, b"UT", b"t" * BIG),
    ])
    header = read_header(memoryview(data), UID(ExplicitVRLittleEndian))
    assert not isinstance(header, ScannedHeader)  # pydicom's
    document = header_json(header)
    assert {"00081150", "00091002", "00204000"}.isdisjoint(document)
    assert {"00081110", "00081111", "00081140", "00100010"} <= set(document)
    assert len(document["00081111"]["Value"]) == 1  # its item, read


def test_pydicom_neither_copies_a_large_value_nor_reads_too_many_elements() -> None:
    big = memoryview(UNDEFINED_OB + _explicit(0x0010, 0x0010, b"PN", NAME) + _explicit(
        0x0042, 0x0011, b"OB", bytes(32 << 20)))
    many = memoryview(UNDEFINED_OB + b"".join(
        struct.pack("<HH2sH", 0x0009 + 2 * (n // 0xF000), 0x1000 + n % 0xF000, b"LO", 0)
        for n in range(400_000)))
    tracemalloc.start()
    try:
        header = read_header(big, UID(ExplicitVRLittleEndian))
        _current, peak_big = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with pytest.raises(OutOfResources):
            read_header(many, UID(ExplicitVRLittleEndian))
        _current, peak_many = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "00420011" not in header_json(header)
    assert peak_big < 1 << 20, peak_big
    # 400,000 elements read whole take some 150 MB; refused at 50,000, a fraction of it.
    assert peak_many < 48 << 20, peak_many
