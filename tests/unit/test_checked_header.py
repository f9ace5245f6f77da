"""The header scan and the structure walk in one pass (``read_checked_header``) decide as the
whole walk followed by the header read do: the same refusals with the same messages, the
same header otherwise, on every shipped file and on damaged ones."""

from __future__ import annotations

import random
import struct

import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mimic_server.codec.header import read_checked_header, read_header
from mimic_server.codec.header_scan import ScannedHeader
from mimic_server.codec.structure import check_structure
from mimic_server.errors import CannotUnderstand
from mimic_server.index.attributes import header_json
from tests.data import Storable, ct_small, storable_files
from tests.malformed import damaged, element_headers


def _verdict(read: object, data: bytes, syntax: UID) -> tuple[str, object]:
    try:
        header = read(memoryview(data), syntax)  # type: ignore[operator]
    except CannotUnderstand as exc:
        return "refused", (exc.status, str(exc))
    try:
        document: object = header_json(header)
    except CannotUnderstand as exc:
        document = ("no JSON", exc.status, str(exc))
    return type(header).__name__, document


def _two_passes(dataset: memoryview, syntax: UID) -> object:
    check_structure(dataset, syntax)
    return read_header(dataset, syntax)


def _same(data: bytes, syntax: UID) -> None:
    assert _verdict(read_checked_header, data, syntax) == _verdict(_two_passes, data, syntax)


@pytest.mark.parametrize("item", storable_files(), ids=lambda f: f.path.name)
def test_shipped_files(item: Storable) -> None:
    syntax = UID(item.transfer_syntax_uid)
    data = item.dataset_bytes()
    _same(data, syntax)
    _same(data[:-1], syntax)


def _ct_small(syntax: str) -> bytes:
    ds = pydicom.dcmread(ct_small())
    buffer = pydicom.filebase.DicomBytesIO()
    uid = UID(syntax)
    buffer.is_implicit_VR, buffer.is_little_endian = uid.is_implicit_VR, True
    pydicom.filewriter.write_dataset(buffer, ds)
    return buffer.getvalue()


def test_takes_the_one_pass_path() -> None:
    data = _ct_small(ExplicitVRLittleEndian)
    assert isinstance(read_checked_header(memoryview(data), UID(ExplicitVRLittleEndian)),
                      ScannedHeader)


def test_damages_after_pixel_data() -> None:
    for data in damaged(_ct_small(ExplicitVRLittleEndian)).values():
        _same(data, UID(ExplicitVRLittleEndian))


def test_cuts_in_and_between_header_elements() -> None:
    data = _ct_small(ExplicitVRLittleEndian)
    for header in element_headers(data):
        end = header.value_start + header.length
        for cut in (header.start + 3, header.value_start - 1, end - 1, end):
            _same(data[:cut], UID(ExplicitVRLittleEndian))


@pytest.mark.parametrize("group", [0x0000, 0x0002, 0xFFFE])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_elements_that_do_not_belong_in_a_header(group: int, syntax: str) -> None:
    uid = UID(syntax)
    data = _ct_small(syntax)
    if uid.is_implicit_VR:
        element = struct.pack("<HHL", group, 0x0000, 4) + struct.pack("<L", 8)
    else:
        element = struct.pack("<HH2sH", group, 0x0000, b"UL", 4) + struct.pack("<L", 8)
    middle = element_headers(_ct_small(ExplicitVRLittleEndian))[20]
    at = middle.start if not uid.is_implicit_VR else None
    _same(element + data, uid)
    if at is not None:
        _same(data[:at] + element + data[at:], uid)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_random_damage_in_the_header(syntax: str) -> None:
    """Bytes changed, dropped or inserted anywhere in the header (a fixed seed)."""
    uid = UID(syntax)
    data = _ct_small(syntax)
    pixel_data = data.find(b"\xe0\x7f\x10\x00")
    rng = random.Random(12)
    for _ in range(150):
        at = rng.randrange(pixel_data + 12)
        kind = rng.randrange(3)
        if kind == 0:
            sample = data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
        elif kind == 1:
            sample = data[:at] + data[at + rng.randrange(1, 9) :]
        else:
            sample = data[:at] + rng.randbytes(rng.randrange(1, 9)) + data[at:]
        _same(sample, uid)
