"""The index keys read from the DICOM JSON equal those read through pydicom, on every file."""

from __future__ import annotations

import dataclasses
from typing import Any

import pydicom
import pytest

from mimic_server.codec.header import parse_header, read_header
from mimic_server.errors import CannotUnderstand
from mimic_server.index.attributes import (
    InstanceAttributes,
    _checked_uid,
    _date,
    _int,
    _text,
    _time,
)
from tests.data import Storable, ct_small, storable_files

LIMITS = {
    "patient_id": ("PatientID", 64), "issuer_of_patient_id": ("IssuerOfPatientID", 64),
    "patient_name": ("PatientName", 324), "patient_sex": ("PatientSex", 16),
    "accession_number": ("AccessionNumber", 64), "study_id": ("StudyID", 16),
    "study_description": ("StudyDescription", 64),
    "referring_physician_name": ("ReferringPhysicianName", 324), "modality": ("Modality", 16),
    "series_description": ("SeriesDescription", 64),
    "body_part_examined": ("BodyPartExamined", 16),
    "specific_character_set": ("SpecificCharacterSet", 200),
}
DATES = {"patient_birth_date": "PatientBirthDate", "study_date": "StudyDate",
         "series_date": "SeriesDate"}
TIMES = {"study_time": "StudyTime", "series_time": "SeriesTime"}
UIDS = {"study_instance_uid": "StudyInstanceUID", "series_instance_uid": "SeriesInstanceUID",
        "sop_instance_uid": "SOPInstanceUID", "sop_class_uid": "SOPClassUID"}
INTEGERS = {"series_number": "SeriesNumber", "instance_number": "InstanceNumber"}


def _through_pydicom(ds: pydicom.Dataset) -> dict[str, object]:
    expected: dict[str, object] = {}
    for field, (keyword, limit) in LIMITS.items():
        expected[field] = _text(ds, keyword, limit)
    for field, keyword in DATES.items():
        expected[field] = _date(_text(ds, keyword, 64))
    for field, keyword in TIMES.items():
        expected[field] = _time(_text(ds, keyword, 64))
    for field, keyword in UIDS.items():
        expected[field] = _checked_uid(keyword, _text(ds, keyword, 1000).rstrip("\x00"))
    for field, keyword in INTEGERS.items():
        expected[field] = _int(ds, keyword)
    return expected


@pytest.mark.parametrize("read", [read_header, parse_header], ids=["as-received", "dataset"])
@pytest.mark.parametrize("item", storable_files(), ids=lambda f: f.path.name)
def test_same_keys_as_through_pydicom(item: Storable, read: Any) -> None:
    data = memoryview(item.path.read_bytes()[item.dataset_offset :])
    syntax = pydicom.uid.UID(item.transfer_syntax_uid)
    try:
        expected = _through_pydicom(parse_header(data, syntax))
    except CannotUnderstand:
        with pytest.raises(CannotUnderstand):
            InstanceAttributes.from_header(read(data, syntax))
        return
    ours = dataclasses.asdict(InstanceAttributes.from_header(read(data, syntax)))
    ours.pop("header")
    assert ours == expected


@pytest.mark.parametrize(
    ("value", "indexed"),
    [("99999999999", None), ("-9999999999", None), ("2147483647", 2147483647),
     ("-2147483648", -2147483648), ("2147483648", None), ("12", 12)],
)
def test_integer_keys_beyond_the_column_are_not_indexed(value: str, indexed: int | None) -> None:
    """IS holds up to twelve characters; the Integer columns 32 bits: NULL, not a failure.
    The header JSON keeps the value as received."""
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    ds.SeriesNumber = value
    ds.InstanceNumber = value
    # pydicom values, raw elements, and the scanned header (the fast path)
    for header in (ds, _reparsed(ds), _reparsed(ds, read_header)):
        attrs = InstanceAttributes.from_header(header)
        assert attrs.series_number == indexed and attrs.instance_number == indexed
        assert attrs.header["00200011"] == {"vr": "IS", "Value": [int(value)]}


def _reparsed(ds: pydicom.Dataset, read: Any = parse_header) -> Any:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = False, True
    write_dataset(buffer, ds)
    return read(memoryview(buffer.getvalue()), pydicom.uid.ExplicitVRLittleEndian)


def _uid_data_set(implicit: bool, sop_instance_uid: bytes) -> memoryview:
    """A header of the four UIDs the index keys on, the SOP Instance UID's bytes as given."""
    import struct

    def element(tag: int, vr: bytes, value: bytes) -> bytes:
        value += b"\0" * (len(value) % 2)
        if implicit:
            return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return memoryview(
        element(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7")
        + element(0x00080018, b"UI", sop_instance_uid)
        + element(0x0020000D, b"UI", b"1.2.3.1") + element(0x0020000E, b"UI", b"1.2.3.2"))


@pytest.mark.parametrize("read", [read_header, parse_header], ids=["scanned", "dataset"])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_a_nul_inside_a_uid_is_refused_not_deleted(read: Any, implicit: bool) -> None:
    """A NUL inside a UID is no padding: '1.2.3\\x004.5' was indexed as 1.2.34.5 while
    pydicom (and every receiver of the stored object) reads 1.2.3\\x004.5. Refused as an
    invalid UID (0xC002) instead; trailing NUL and space padding and leading spaces are
    taken off, as pydicom takes them off."""
    syntax = pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian
    for padded in (b"1.2.3.4", b"1.2.3.4\0\0\0\0", b" 1.2.3.4 ", b"1.2.3.4 \0"):
        attrs = InstanceAttributes.from_header(read(_uid_data_set(implicit, padded), syntax))
        assert attrs.sop_instance_uid == "1.2.3.4", padded
    for nul_inside in (b"1.2.3\x004.5", b"\x001.2.3.4", b"1.2.3.4\0\0X"):
        with pytest.raises(CannotUnderstand) as refused:
            InstanceAttributes.from_header(read(_uid_data_set(implicit, nul_inside), syntax))
        assert refused.value.status == 0xC002, nul_inside
        assert str(refused.value) == "SOPInstanceUID is not a valid UID"


@pytest.mark.parametrize("read", [read_header, parse_header], ids=["scanned", "dataset"])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_white_space_other_than_padding_makes_a_uid_invalid(read: Any, implicit: bool) -> None:
    """Only a trailing NUL or space and leading spaces are padding. pydicom's ``UID`` strips
    every kind of white space (tab, line feed, ..., also U+00A0 and U+001C decoded from
    Latin-1), so '1.2.3.4\\t' was indexed and accepted as 1.2.3.4 while the stored object
    says otherwise; ``$`` in the UID pattern also let a final line feed through."""
    from mimic_server.index.attributes import valid_uid

    syntax = pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian
    for white in (b"1.2.3.4\t", b"1.2.3.4\n", b"1.2.3.4\r\n", b"\t1.2.3.4", b"1.2.3.4\x0b",
                  b"1.2.3.4\x1c", b"1.2.3.4\xa0", b"1.2.3.4 \t\0", b"\n1.2.3.4"):
        with pytest.raises(CannotUnderstand) as refused:
            InstanceAttributes.from_header(read(_uid_data_set(implicit, white), syntax))
        assert refused.value.status == 0xC002, white
        assert str(refused.value) == "SOPInstanceUID is not a valid UID"
    assert not valid_uid("1.2.3\n") and valid_uid("1.2.3")


@pytest.mark.parametrize("keyword", ["PatientID", "IssuerOfPatientID"])
def test_a_patient_id_past_64_characters_is_refused_not_cut(keyword: str) -> None:
    """Patient ID and its issuer are the patient's key. Cut to the 64 characters of their
    index columns, two patients whose IDs differ past the 64th were one patient (the second
    one's studies filed under the first's name), and a C-FIND for the ID as sent found
    neither. Longer than their VR (LO) allows, they are refused 0xC000; 64 are kept whole,
    spaces around them taken off as before."""
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    for value in ("H" * 64, " " + "H" * 64 + " "):
        setattr(ds, keyword, value)
        attrs = InstanceAttributes.from_header(_reparsed(ds, read_header))
        field = "patient_id" if keyword == "PatientID" else "issuer_of_patient_id"
        assert getattr(attrs, field) == "H" * 64
    for value in ("H" * 64 + "1", "H" * 64 + "2", "Ü" * 65, "H" * 300):
        setattr(ds, keyword, value)
        ds.SpecificCharacterSet = "ISO_IR 192"
        for read in (read_header, parse_header):
            with pytest.raises(CannotUnderstand) as refused:
                InstanceAttributes.from_header(_reparsed(ds, read))
            assert refused.value.status == 0xC000
            assert str(refused.value) == f"{keyword} is longer than 64 characters"


@pytest.mark.parametrize("read", [read_header, parse_header], ids=["scanned", "dataset"])
@pytest.mark.parametrize("vr", [b"OB", b"OW"])
def test_a_text_key_sent_with_a_binary_vr_is_indexed_as_its_text(read: Any, vr: bytes) -> None:
    """A Patient ID (or any text key) sent with a binary VR keeps its bytes in pydicom,
    and ``str`` of those is Python's ``b'PID1'``: that was the indexed Patient ID (its
    patient's key), which no C-FIND for PID1 matched. Its bytes are decoded as text, in
    the data set's own character set."""
    import struct

    def element(tag: int, element_vr: bytes, value: bytes) -> bytes:
        value += b" " * (len(value) % 2)
        if element_vr in (b"OB", b"OW"):
            return struct.pack("<HH2sxxL", tag >> 16, tag & 0xFFFF, element_vr,
                               len(value)) + value
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, element_vr, len(value)) + value

    for charset, value, text in ((b"", b"PID1", "PID1"),
                                 (b"ISO_IR 192", "Müller".encode(), "Müller"),
                                 (b"\\ISO 2022 IR 87", b"\x1b$B;3ED\x1b(B", "山田")):
        data = memoryview(
            (element(0x00080005, b"CS", charset) if charset else b"")
            + element(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0")
            + element(0x00080018, b"UI", b"1.2.3.4") + element(0x00081030, vr, value)
            + element(0x00100020, vr, value)
            + element(0x0020000D, b"UI", b"1.2.3.1") + element(0x0020000E, b"UI", b"1.2.3.2"))
        attrs = InstanceAttributes.from_header(read(data, pydicom.uid.ExplicitVRLittleEndian))
        assert (attrs.patient_id, attrs.study_description) == (text, text), charset
