"""A fast reader for the common header: little endian, every element of defined length.

pydicom's ``read_dataset`` costs about 8 µs an element in Python (2 ms for a CT header of
256 elements), a fifth of a small C-STORE. Almost every header a modality sends is explicit
or implicit VR little endian with defined lengths up to Pixel Data; for those this module
builds the very same ``Dataset`` of raw elements that pydicom would, in a quarter of the
time. Anything else (big endian, a sequence or item of undefined length, an unknown VR, a
VR encoding other than the transfer syntax's, a truncated element) returns ``None`` and
pydicom reads the header itself, with all its own rules.
"""

from __future__ import annotations

import struct

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

_PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
_SPECIFIC_CHARACTER_SET = 0x00080005
_UNDEFINED = 0xFFFFFFFF
#: The VRs pydicom knows, by their two bytes: the explicit VR header's length field size.
_VR_LONG = {str(vr).encode(): str(vr) for vr in VR if vr in EXPLICIT_VR_LENGTH_32}
_VR_SHORT = {str(vr).encode(): str(vr) for vr in VR if vr not in EXPLICIT_VR_LENGTH_32}
_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHL")
_LENGTH_32 = struct.Struct("<L")


def read_little_endian_header(data: memoryview, implicit: bool) -> Dataset | None:
    """The header up to Pixel Data as pydicom's ``read_dataset`` reads it, or ``None``."""
    elements = raw_elements(data, implicit, stop_at_pixel_data=True)
    if elements is None:
        return None
    dataset = Dataset(elements)
    encoding: str | list[str] = default_encoding
    if _SPECIFIC_CHARACTER_SET in elements:
        charset = convert_raw_data_element(elements[BaseTag(_SPECIFIC_CHARACTER_SET)]).value
        encoding = convert_encodings(charset)  # type: ignore[arg-type]
    dataset.set_original_encoding(implicit, True, encoding)
    return dataset


def raw_elements(
    data: memoryview, implicit: bool, stop_at_pixel_data: bool
) -> dict[BaseTag, RawDataElement] | None:
    """The raw elements of a little endian dataset (a header, or a sequence item's)."""
    size = data.nbytes
    if size >= 6:
        # pydicom looks at the first element to tell explicit from implicit VR: so do we,
        # and leave the odd object that disagrees with its transfer syntax to pydicom.
        looks_explicit = 0x40 < data[4] < 0x5B and 0x40 < data[5] < 0x5B
        if looks_explicit == implicit:
            return None
    elements: dict[BaseTag, RawDataElement] = {}
    pos = 0
    vr: str | None = None
    while pos + 8 <= size:
        if implicit:
            group, number, length = _IMPLICIT.unpack_from(data, pos)
            start = pos + 8
        else:
            group, number, vr_bytes, length = _EXPLICIT.unpack_from(data, pos)
            vr = _VR_SHORT.get(vr_bytes)
            if vr is not None:
                start = pos + 8
            else:
                vr = _VR_LONG.get(vr_bytes)
                if vr is None or pos + 12 > size:
                    return None
                length = _LENGTH_32.unpack_from(data, pos + 8)[0]
                start = pos + 12
        tag = group << 16 | number
        if stop_at_pixel_data and tag in _PIXEL_DATA_TAGS:
            break
        end = start + length
        if length == _UNDEFINED or end > size or group == 0xFFFE:
            return None
        value = data[start:end].tobytes() if length else empty_value_for_VR(vr, raw=True)
        base_tag = BaseTag(tag)
        elements[base_tag] = RawDataElement(
            base_tag, vr, length, value, start, implicit, True  # type: ignore[arg-type]
        )
        pos = end
    if not stop_at_pixel_data and pos != size:
        return None  # trailing bytes in an item: pydicom's rules
    return elements
