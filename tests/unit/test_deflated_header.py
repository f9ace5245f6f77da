"""The header of a Deflated data set is read from as little of it as holds the header,
never from an inflated or copied whole: a spooled data set may be gigabytes."""

from __future__ import annotations

import io
import os
import struct
import zlib

import pytest
from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from mimic_server.codec import header as header_module
from mimic_server.codec.header import _at_pixel_data, read_header
from mimic_server.codec.header_scan import ScannedHeader
from tests.memory import peak_allocated

DEFLATED = UID(DeflatedExplicitVRLittleEndian)
MiB = 1 << 20


def _element(group: int, number: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHL", group, number, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, number, vr, len(value)) + value


HEAD = b"".join([
    _element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\x00"),
    _element(0x0008, 0x0018, b"UI", b"1.2.3.4.5.6\x00"),
    _element(0x0010, 0x0010, b"PN", b"Deflated^Header "),
])


def _pixel_data(size: int) -> bytes:
    return struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, size)


def _deflate(*parts: bytes) -> bytes:
    deflater = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    return b"".join(deflater.compress(part) for part in parts) + deflater.flush()


def _pydicom(plain: bytes) -> dict[int, bytes]:
    ds = read_dataset(io.BytesIO(plain), False, True, stop_when=_at_pixel_data)
    return {int(tag): ds._dict[tag].value for tag in ds._dict}  # type: ignore[union-attr]


def _values(header: object) -> dict[int, bytes]:
    assert isinstance(header, ScannedHeader)
    return {tag: value for tag, (_vr, value, _start) in header.elements.items()}


def test_the_header_comes_from_the_first_megabyte_of_a_large_data_set() -> None:
    pixels = bytes(32 * MiB)  # inflates from a few KiB: the first budget is what is inflated
    deflated = _deflate(HEAD, _pixel_data(len(pixels)), pixels)
    header, inflated = header_module._inflated_header(memoryview(deflated))
    assert len(inflated) <= header_module._FIRST_INFLATED
    assert _values(header) == _pydicom(HEAD + _pixel_data(0))


def test_a_header_past_the_first_budget_is_read_whole() -> None:
    private = _element(0x0011, 0x0010, b"LO", b"MIMIC TEST") + b"".join(
        _element(0x0011 + 2 * (n // 0xF0), 0x1000 + n % 0xF0, b"OB", os.urandom(1_000))
        for n in range(3_000))  # 3 MB of values kept whole (none over 1 KiB)
    plain = HEAD + private + _pixel_data(4) + b"\x00" * 4
    header = read_header(memoryview(_deflate(plain)), DEFLATED)
    assert _values(header) == _pydicom(plain)


def test_a_data_set_without_pixel_data_is_read_to_its_end() -> None:
    plain = HEAD + _element(0x0020, 0x000D, b"UI", b"1.2.3\x00")
    header = read_header(memoryview(_deflate(plain)), DEFLATED)
    assert _values(header) == _pydicom(plain)


def test_a_header_the_scan_leaves_to_pydicom_is_read_by_it() -> None:
    undefined = struct.pack("<HH2sHL", 0x0007, 0x1010, b"OB", 0, 0xFFFFFFFF) + struct.pack(
        "<HHL", 0xFFFE, 0xE000, 2) + b"\x01\x02" \
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)  # not a sequence: the scan leaves it
    plain = HEAD + undefined + _pixel_data(2) + b"\x00\x00"
    header = read_header(memoryview(_deflate(plain)), DEFLATED)
    assert not isinstance(header, ScannedHeader)
    assert str(header.PatientName) == "Deflated^Header"  # type: ignore[union-attr]


def test_the_compressed_input_is_neither_copied_nor_inflated_whole() -> None:
    """zlib copies aside the input it is not asked to inflate (``unconsumed_tail``): handed
    the whole data set, a copy of nearly all of it."""
    pixels = os.urandom(48 * MiB)  # incompressible: the deflated data set is as large
    deflated = _deflate(HEAD, _pixel_data(len(pixels)), pixels)
    view = memoryview(deflated)
    with peak_allocated() as peak_:
        header = read_header(view, DEFLATED)
    peak = peak_[0]
    assert _values(header) == _pydicom(HEAD + _pixel_data(0))
    assert peak < 8 * MiB, f"{peak / MiB:.1f} MiB allocated to read the header"


@pytest.mark.parametrize("cut", [1, 7, 100])
def test_a_truncated_deflated_header_is_refused_or_read_as_pydicom_reads_it(cut: int) -> None:
    plain = HEAD + _element(0x0020, 0x000D, b"UI", b"1.2.3\x00")
    deflated = _deflate(plain)
    truncated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(deflated)[:-cut]
    try:
        expected: object = _pydicom(truncated)
    except Exception:
        expected = "refused"
    try:
        got: object = _values(read_header(memoryview(_deflate(truncated)), DEFLATED))
    except Exception:
        got = "refused"
    assert got == expected or (expected != "refused" and got == "refused")
