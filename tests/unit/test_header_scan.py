"""The fast header reader gives exactly pydicom's raw elements, or leaves the file to it."""

from __future__ import annotations

import io
import struct
import tracemalloc

import pydicom
import pytest
from pydicom.filereader import read_dataset

from mimic_server.codec.header import _at_pixel_data
from mimic_server.codec.header_scan import (
    LARGEST_HEADER_VALUE,
    read_little_endian_header,
    scan_header,
)
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
    # Bulk elements (longer than LARGEST_HEADER_VALUE) are there, their values not copied.
    for tag in scanned.bulk:
        raw = reference._dict[tag]
        assert raw.length > LARGEST_HEADER_VALUE and raw.VR != "SQ"  # type: ignore[union-attr]
        assert ours._dict[tag].length == 0  # type: ignore[union-attr]
    assert {t: e for t, e in ours._dict.items() if t not in scanned.bulk} == {
        t: e for t, e in reference._dict.items() if t not in scanned.bulk}
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
        # a sequence of undefined length
        b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\xdd\xe0\x00\x00\x00\x00",
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
        _explicit(0x0009, 0x1002, b"OB", bytes(LARGEST_HEADER_VALUE)),  # kept: its bound
        _explicit(0x0010, 0x0010, b"PN", NAME),
        _explicit(0x0020, 0x4000, b"UT", b"t" * BIG),
        _explicit(0x0042, 0x0011, b"OB", bytes(BIG)),
    ])
    header = scan_header(memoryview(data), implicit=False)
    assert header is not None
    assert header.bulk == (0x00091001, 0x00204000, 0x00420011)
    assert header.elements[0x00091002][1] == bytes(LARGEST_HEADER_VALUE)
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
    assert header.bulk == (0x00420011,)
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
    assert header is not None and header.bulk == (0x00420011,)
    assert peak < 1 << 20, peak
