"""QIDO-RS writes the DICOM JSON of plain answer values, and the Identifier's bytes for the
audit message, itself: each must be exactly what pydicom writes for the same values,
whichever path a value takes."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from mimic_server.codec.answer import Answer
from mimic_server.query.keys import Level
from mimic_server.web.dicomweb.qido import answer_json, build_identifier, identifier_bytes

VALUES: list[tuple[str, Any]] = [
    ("CS", None), ("CS", ""), ("CS", []), ("CS", "CT"), ("CS", ["CT", "MR"]),
    ("CS", ["CT", ""]), ("CS", "CT\\MR"), ("CS", " A "), ("CS", [" "]), ("CS", "ONLINE"),
    ("PN", "DOE^JOHN"), ("PN", "DOE^JOHN="), ("PN", "DOE^JOHN=ド^ジョン=do^jon"),
    ("PN", ["A^B", "C^D"]), ("PN", [""]), ("PN", "A^B "), ("PN", "Äsa^Öl"),
    ("LO", "a b "), ("LO", "Ä"), ("SH", "A1"), ("UI", "1.2.3"), ("UI", "1.2.3 "),
    ("UI", "1.2\x00"), ("DA", "20200101"), ("TM", "120000"), ("DT", "20200101120000"),
    ("IS", "10"), ("IS", ["1", "2"]), ("IS", "007"), ("IS", "-3"), ("IS", "+7"),
    ("IS", " 7"), ("IS", "1234567890123"), ("AE", "MIMIC"), ("AS", "042Y"),
    ("LT", "a\\b"), ("ST", "text"), ("UT", "x"), ("UR", "http://h/x"), ("UC", "u"),
    ("US", 512), ("US", [512, 1]), ("US", []), ("UL", [70000]), ("SS", [-1]), ("SL", [-5]),
]


def _pydicom(tag: int, vr: str, value: Any) -> dict[str, Any]:
    dataset = Dataset()
    dataset.add_new(tag, vr, value)
    return dataset.to_json_dict()[f"{tag:08X}"]


@pytest.mark.parametrize(("vr", "value"), VALUES, ids=[f"{v}-{x!r}" for v, x in VALUES])
def test_plain_value_json_equals_pydicom(vr: str, value: Any) -> None:
    tag = 0x00100010 if vr == "PN" else 0x00091010  # a private tag takes any VR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the unusual values
        expected = _pydicom(tag, vr, value)
        answer = Answer.of({tag: (vr, value)}, fill=False)
        assert len(answer) == 0  # left empty: the JSON is written from the plain values
        assert answer_json(answer, None)[f"{tag:08X}"] == expected


def test_answer_json_drops_dimse_elements_and_sorts() -> None:
    plain = {
        0x00100020: ("LO", "P1"), 0x00080005: ("CS", "ISO_IR 192"),
        0x00080052: ("CS", "STUDY"), 0x00080054: ("AE", "MIMIC"),
        0x00080020: ("DA", "20200101"), 0x00201208: ("IS", "10"),
    }
    document = answer_json(Answer.of(plain, fill=False), None)
    assert list(document) == ["00080020", "00100020", "00201208"]
    assert document == {key: value for key, value in
                         Answer.of(plain).to_dataset().to_json_dict().items()
                         if key in document}


def test_answer_json_of_a_pydicom_dataset() -> None:
    dataset = Dataset()
    dataset.QueryRetrieveLevel = "STUDY"
    dataset.PatientName = "DOE^JANE"
    assert answer_json(dataset, None) == {"00100010": {"vr": "PN",
                                                       "Value": [{"Alphabetic": "DOE^JANE"}]}}


IDENTIFIERS: list[tuple[list[tuple[str, str]], Level]] = [
    ([("StudyDate", "20190304-20190304"), ("includefield", "StudyDescription")], Level.STUDY),
    ([("PatientName", "SMITH*"), ("includefield", "all")], Level.STUDY),
    ([("PatientName", "Müller*")], Level.STUDY),  # not ASCII: pydicom writes it
    ([("StudyInstanceUID", "1.2.3,1.2.4")], Level.STUDY),
    ([("ModalitiesInStudy", "CT\\MR"), ("PatientID", "P1")], Level.STUDY),
    ([("Modality", "CT"), ("SeriesNumber", "3")], Level.SERIES),  # IS match value
    ([("00400275.00401001", "RP1")], Level.SERIES),  # a sequence
    ([("SOPInstanceUID", "1.2.3.4"), ("includefield", "Rows")], Level.IMAGE),
    ([("AccessionNumber", "A1 ")], Level.STUDY),
]


@pytest.mark.parametrize(("items", "level"), IDENTIFIERS)
def test_identifier_bytes_equal_pydicom_write_dataset(
    items: list[tuple[str, str]], level: Level
) -> None:
    identifier, _ = build_identifier(items, level, {})
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, identifier)
    assert identifier_bytes(identifier) == buffer.getvalue()
