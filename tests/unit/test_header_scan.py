"""The fast header reader gives exactly pydicom's raw elements, or leaves the file to it."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.filereader import read_dataset

from mimic_server.codec.header import _at_pixel_data
from mimic_server.codec.header_scan import read_little_endian_header
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
    ours = read_little_endian_header(memoryview(data), implicit)
    if ours is None:
        return  # undefined lengths or another oddity: pydicom reads this one
    reference = _reference(data, implicit)
    assert ours._dict == reference._dict
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
