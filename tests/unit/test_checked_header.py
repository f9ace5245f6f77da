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


def _charset_files() -> list[object]:
    from pathlib import Path

    from pydicom.data import DATA_ROOT

    return sorted((Path(DATA_ROOT) / "charset_files").glob("*.dcm"))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("path", _charset_files(), ids=lambda p: p.name)  # type: ignore[attr-defined]
def test_character_sets_as_through_a_dataset(path: object, syntax: str) -> None:
    """pydicom's character set files (Latin-1, Cyrillic, Greek, Arabic, Hebrew, Japanese
    and Korean ISO 2022, Chinese, UTF-8; sequences with their own): the scanned header
    gives the JSON and the index columns that the header as a ``Dataset`` gives, and the
    Specific Character Set decides as pydicom's value does, with and without padding."""
    import dataclasses

    from mimic_server.codec.header import parse_header
    from mimic_server.index.attributes import InstanceAttributes

    ds = pydicom.dcmread(path, force=True)
    ds.StudyInstanceUID = ds.get("StudyInstanceUID") or "1.2.3"
    ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or "1.2.3.4"
    ds.SOPInstanceUID = ds.get("SOPInstanceUID") or "1.2.3.4.5"
    ds.SOPClassUID = ds.get("SOPClassUID") or "1.2.840.10008.5.1.4.1.1.7"
    uid = UID(syntax)
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = uid.is_implicit_VR, True
    pydicom.filewriter.write_dataset(buffer, ds)
    data = buffer.getvalue()
    scanned = read_header(memoryview(data), uid)
    assert isinstance(scanned, ScannedHeader)
    ours = dataclasses.asdict(InstanceAttributes.from_header(scanned))
    through_dataset = dataclasses.asdict(
        InstanceAttributes.from_header(parse_header(memoryview(data), uid)))
    assert ours == through_dataset


@pytest.mark.parametrize("charset", [b"", b"ISO_IR 100", b"ISO_IR 100 ", b" ISO_IR 192",
                                     b"ISO_IR 192", b"ISO_IR 6", b"ISO 2022 IR 6\\ISO 2022 IR 87",
                                     b"\\ISO 2022 IR 100", b"GB18030", b"NOT A CHARSET"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_specific_character_set_values(charset: bytes, syntax: str) -> None:
    """The codec the scanned header takes from the raw value is the one the ``Dataset``
    path takes from pydicom's value: the same JSON and columns for names in Latin-1."""
    import dataclasses
    import warnings

    from mimic_server.codec.header import parse_header
    from mimic_server.index.attributes import InstanceAttributes

    uid = UID(syntax)
    if len(charset) % 2:
        charset += b" "

    def element(tag: int, vr: bytes, value: bytes) -> bytes:
        if uid.is_implicit_VR:
            return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value

    data = b"".join([
        element(0x00080005, b"CS", charset),
        element(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\x00"),
        element(0x00080018, b"UI", b"1.2.3.4.5\x00"),
        element(0x00081030, b"LO", "Étude du cœur".encode("latin_1", "replace") + b" "),
        element(0x00100010, b"PN", "Müller^Jörg".encode("latin_1") + b" "),
        element(0x0020000D, b"UI", b"1.2.3\x00"),
        element(0x0020000E, b"UI", b"1.2.3.4\x00"),
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's words on unknown character sets
        scanned = read_header(memoryview(data), uid)
        assert isinstance(scanned, ScannedHeader)
        ours = dataclasses.asdict(InstanceAttributes.from_header(scanned))
        expected = dataclasses.asdict(
            InstanceAttributes.from_header(parse_header(memoryview(data), uid)))
    assert ours == expected
