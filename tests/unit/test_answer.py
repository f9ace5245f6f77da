"""A plain C-FIND answer encodes to the bytes pydicom writes for the same Dataset."""

from __future__ import annotations

from typing import Any

import pytest
from pynetdicom.dsutils import encode

from mimic_server.codec.answer import UTF8, Answer

BASE: dict[int, tuple[str, Any]] = {
    0x00080005: ("CS", UTF8),
    0x00080052: ("CS", "STUDY"),
    0x00080054: ("AE", "MIMIC"),
}
CASES: dict[str, dict[int, tuple[str, Any]]] = {
    "study keys": {
        0x00100010: ("PN", "Doe^John"),
        0x00100020: ("LO", "ID-1"),
        0x0020000D: ("UI", "1.2.826.0.1.3680043.8.498.1"),
        0x00080020: ("DA", "20240101"),
        0x00080050: ("SH", None),
        0x00081030: ("LO", "odd"),
        0x00080061: ("CS", ["CT", "MR"]),
        0x00201208: ("IS", "12"),
    },
    "utf-8 names": {
        0x00100010: ("PN", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        0x00081030: ("LO", "Ärztliche Befundung"),
        0x00100020: ("LO", ["A", "", "Ω"]),
    },
    "numbers": {
        0x00280010: ("US", [512]),
        0x00280011: ("US", [512, 256]),
        0x00181151: ("IS", ["1", "22"]),
        0x00200013: ("IS", None),
    },
    "empty everything": {
        0x00100010: ("PN", None),
        0x00100030: ("DA", ""),
        0x00080061: ("CS", []),
    },
}


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("name", CASES)
def test_same_bytes_as_pydicom(name: str, implicit: bool) -> None:
    answer = Answer.of({**BASE, **CASES[name]})
    ours = answer.encode(implicit, True)
    assert ours is not None
    assert ours == encode(answer.to_dataset(), implicit, True)


def test_big_endian_and_odd_values_are_left_to_pydicom() -> None:
    assert Answer.of(dict(BASE)).encode(False, False) is None
    assert Answer.of({**BASE, 0x00280010: ("US", ["512"])}).encode(False, True) is None
    assert Answer.of({**BASE, 0x00080060: ("CS", "Ä")}).encode(False, True) is None
    other = {**BASE, 0x00080005: ("CS", "ISO_IR 100")}
    assert Answer.of(other).encode(False, True) is None
