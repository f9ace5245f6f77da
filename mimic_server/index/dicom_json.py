"""The header as DICOM JSON (PS3.18 F.2), written straight from the raw elements.

Converting every raw element into a pydicom ``DataElement`` first costs about 35 µs an
element (some 9 ms for a CT header of 256 elements), the largest share of a C-STORE. Most
header elements are short text or binary numbers whose JSON form is plain: those are read
here directly from their bytes. Anything else (person names, sequences, inline binary, text
in a character set other than ASCII / Latin-1 / UTF-8, values pydicom would have to correct)
is handed to pydicom element by element, so the result equals pydicom's own
``to_json_dict`` (tests/unit/test_dicom_json.py checks that on every test file).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

#: VRs whose values are ASCII text, one or more backslash-separated values.
_ASCII = {"AE", "AS", "CS", "DA", "DT", "TM", "UI"}
#: VRs decoded with the Specific Character Set; multi-valued unless single below.
_CHARSET = {"LO", "SH", "LT", "ST", "UC", "UT"}
_SINGLE_VALUED = {"LT", "ST", "UT", "UR"}
_BINARY = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d",
           "UV": "Q", "SV": "q"}
#: Character sets whose Python codec is exact for single-byte values.
_CODECS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}


def header_to_json(ds: Dataset, element_json: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """DICOM JSON of ``ds``; ``element_json(element)`` converts what is not read here."""
    charset = ds.get("SpecificCharacterSet", "") if 0x00080005 in ds._dict else ""
    codec = _CODECS.get(str(charset).strip()) if not isinstance(charset, list) else None
    out: dict[str, Any] = {}
    for tag, value in ds._dict.items():
        entry = _fast(value, codec) if isinstance(value, RawDataElement) else None
        if entry is None:
            entry = element_json(ds[tag])
        if entry is not None:
            out[f"{int(tag):08X}"] = entry
    return out


def _fast(raw: RawDataElement, codec: str | None) -> dict[str, Any] | None:
    vr = raw.VR
    if raw.tag & 0xFFFF == 0:
        return None  # group lengths: pydicom's rules
    if vr is None:
        if (raw.tag >> 16) % 2 == 1:
            return None  # implicit VR private element: pydicom makes it UN
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            return None
    data = raw.value
    if data is None or len(data) == 0:
        return {"vr": vr} if vr in _ASCII or vr in _CHARSET or vr in _BINARY else None
    if vr in _BINARY:
        fmt = _BINARY[vr]
        order = "<" if raw.is_little_endian else ">"
        size = struct.calcsize(order + fmt)
        if len(data) % size:
            return None
        values = list(struct.unpack(f"{order}{len(data) // size}{fmt}", data))
        if vr in ("FL", "FD") and any(v != v or v in (float("inf"), float("-inf"))
                                      for v in values):
            return None
        return {"vr": vr, "Value": values}
    if vr in ("IS", "DS"):
        return _number_strings(vr, bytes(data))
    if vr in _ASCII or (vr in _CHARSET and codec is not None):
        try:
            text = bytes(data).decode("ascii" if vr in _ASCII else codec)  # type: ignore[arg-type]
        except UnicodeDecodeError:
            return None
        if "\x1b" in text:
            return None
        text = _strip(vr, text)
        values = [text] if vr in _SINGLE_VALUED else text.split("\\")
        if vr == "UI" and any(not v.replace(".", "").isdigit() for v in values if v):
            return None  # pydicom's validation decides about malformed UIDs
        if all(v == "" for v in values):
            return {"vr": vr}
        return {"vr": vr, "Value": values}
    return None


def _number_strings(vr: str, data: bytes) -> dict[str, Any] | None:
    """IS and DS: numbers in JSON, as pydicom's IS / DSfloat values serialize."""
    try:
        parts = [p.strip(" \x00") for p in data.decode("ascii").split("\\")]
        if vr == "IS":
            values: list[Any] = [int(p) if p else None for p in parts]
        else:
            values = [float(p) if p else None for p in parts]
    except (UnicodeDecodeError, ValueError):
        return None
    if any(isinstance(v, float) and (v != v or v in (float("inf"), float("-inf")))
           for v in values):
        return None
    if all(v is None for v in values):
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def _strip(vr: str, value: str) -> str:
    if vr == "UI":
        return value.rstrip("\x00 ").lstrip(" ")
    if vr in ("LT", "ST", "UT"):
        return value.rstrip(" \x00")
    return value.strip(" \x00")
