"""Damaged data sets made from real ones: where their element headers are, and named damages.

Used by the structural walk's unit tests, the C-STORE refusal tests and the fuzzing layer.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataelem import RawDataElement
from pydicom.filereader import data_element_generator
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from tests.data import Storable


@dataclass(frozen=True)
class ElementHeader:
    """One top-level element of an explicit VR little endian data set."""

    start: int  # of its header
    value_start: int
    length: int

    @property
    def length_field(self) -> tuple[int, str]:
        """Where its length is written, and how (``<H`` or ``<L``)."""
        if self.value_start - self.start == 12:
            return self.start + 8, "<L"
        return self.start + 6, "<H"


def element_headers(data: bytes) -> list[ElementHeader]:
    """The top-level elements of an explicit VR little endian data set, in file order."""
    headers = []
    for element in data_element_generator(io.BytesIO(data), False, True):
        if not isinstance(element, RawDataElement) or element.length == 0xFFFFFFFF:
            continue
        header = 12 if element.VR in EXPLICIT_VR_LENGTH_32 else 8
        headers.append(
            ElementHeader(element.value_tell - header, element.value_tell, element.length)
        )
    return headers


def with_length(data: bytes, header: ElementHeader, length: int) -> bytes:
    position, fmt = header.length_field
    size = struct.calcsize(fmt)
    return data[:position] + struct.pack(fmt, length) + data[position + size :]


#: (FFFD,1010), a private element: placed after every element of a real data set (CT_small
#: ends with Data Set Trailing Padding (FFFC,FFFC)), so that only the damage is wrong, not
#: the tag order (PS3.5 7.1).
_LAST_TAG = b"\xfd\xff\x10\x10"

DAMAGES = (
    "value cut short", "trailing bytes", "header cut short", "length overruns",
    "length falls short", "unknown VR", "item delimiter among elements", "unclosed sequence",
    "element where an item belongs", "item delimiter of non-zero length", "tag repeated",
    "tag out of order",
)


def damaged(data: bytes) -> dict[str, bytes]:
    """Named damages of an explicit VR little endian data set, all after its Pixel Data
    when it has some (where a header parse that stops at Pixel Data cannot see them)."""
    last = element_headers(data)[-1]
    item_end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    return {
        "value cut short": data[:-3],
        "trailing bytes": data + b"\x00" * 5,
        "header cut short": data + b"\xfc\xff\xfc\xffOB",
        "length overruns": with_length(data, last, last.length + 4),
        "length falls short": with_length(data, last, last.length - 2),
        "unknown VR": data[: last.start + 4] + b"ZZ" + data[last.start + 6 :],
        "item delimiter among elements": data[: last.start] + item_end + data[last.start :],
        "unclosed sequence": data
        + _LAST_TAG + b"SQ\x00\x00\xff\xff\xff\xff"  # a sequence of undefined length
        + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # an item of undefined length, never closed
        + b"\x08\x00\x50\x00SH\x02\x00AB",
        "element where an item belongs": data
        + _LAST_TAG + b"SQ\x00\x00\xff\xff\xff\xff"
        + b"\x08\x00\x50\x00SH\x02\x00AB"
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00",
        "item delimiter of non-zero length": data  # its length spells a VR: PS3.5 7.5.2
        + _LAST_TAG + b"SQ\x00\x00\xff\xff\xff\xff"
        + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        + b"\x08\x00\x50\x00SH\x02\x00AB"
        + b"\xfe\xff\x0d\xe0OB\x00\x00"
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00",
        # PS3.5 7.1: ascending, each tag once. pydicom reads the last of a repeated tag,
        # and an element after Pixel Data is past where the header read stops.
        "tag repeated": data + data[last.start :],
        "tag out of order": data + b"\x10\x00\x20\x00LO\x08\x00OTHER-ID",  # Patient ID
    }


def part10(item: Storable, dataset: bytes, directory: Path, name: str) -> Path:
    """``item``'s own File Meta Information followed by ``dataset``: a file pynetdicom
    sends as it is (``STORE_SEND_CHUNKED_DATASET``)."""
    path = directory / f"{name}.dcm"
    path.write_bytes(item.path.read_bytes()[: item.dataset_offset] + dataset)
    return path
