"""The header as DICOM JSON (PS3.18 F.2), written straight from the raw elements.

Converting every raw element into a pydicom ``DataElement`` first costs about 35 µs an
element (some 9 ms for a CT header of 256 elements), the largest share of a C-STORE. Most
header elements are short text or binary numbers whose JSON form is plain: those are read
here directly from their bytes, by one small reader per VR. Anything else (person names,
sequences, inline binary, text in a character set other than ASCII / Latin-1 / UTF-8, values
pydicom would have to correct) is handed to pydicom element by element, so the result equals
pydicom's own ``to_json_dict`` (tests/unit/test_dicom_json.py checks that on every test file).

NaN and infinity: FL and FD map to a JSON Number (PS3.18 Table F.2.3-1; only IS, DS, SV and
UV may fall back to a JSON String), and a JSON Number cannot be NaN or infinite (RFC 8259
section 6), so DICOM JSON has no encoding for such a value. An element holding one is left
out of the document, wherever it is (also inside a sequence item), as an element that
cannot be converted is; the stored bytes keep it. pydicom would write a bare ``NaN`` token,
which is not JSON and which PostgreSQL's ``jsonb`` refuses.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import sys
from array import array
from collections.abc import Callable
from typing import Any

import orjson
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from mimic_server.codec.header_scan import ScannedHeader, scan_elements
from mimic_server.codec.nesting import MAX_FRAMES, MAX_SEQUENCE_DEPTH, nests_deeper_than, too_deep
from mimic_server.codec.structure import undefined_item_end

#: Character sets whose Python codec is exact for single-byte values.
_CODECS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
_SINGLE_VALUED = {"LT", "ST", "UT", "UR"}
_LITTLE_ENDIAN_HOST = sys.byteorder == "little"

#: One JSON document entry, or None for "let pydicom do it".
Entry = dict[str, Any] | None
Reader = Callable[[str, bytes, bool, "str | None"], Entry]


def header_to_json(
    header: ScannedHeader | Dataset, element_json: Callable[[Any], dict[str, Any] | None]
) -> tuple[dict[str, Any], set[str]]:
    """DICOM JSON of ``header`` and the keys ``element_json(element)`` had to convert.

    A scanned header is written from its value bytes, without pydicom; its ``Dataset`` is
    built only when ``element_json`` must convert one of its elements. The entries read
    here hold no bulk data and no NUL; those from ``element_json`` may.
    """
    if not isinstance(header, ScannedHeader):
        return _dataset_to_json(header, element_json)
    elements = header.elements
    charset = elements.get(0x00080005)
    codec = _codec_of(charset[0], charset[1]) if charset is not None else _CODECS[""]
    implicit = header.implicit
    out: dict[str, Any] = {}
    converted: set[str] = set()
    keys = _KEYS
    readers = _READERS
    last = _LAST
    bulk = header.bulk
    for tag, (vr, data, _start) in elements.items():
        key = keys.get(tag) or _key(tag)
        # What _entry does, without its call for the usual element (a VR, a value).
        reader = readers.get(vr)  # type: ignore[arg-type]
        if reader is not None and data and tag & 0xFFFF:
            seen = last.get(tag)
            if seen is not None and seen[0] == data and seen[1] == vr and seen[2] == codec:
                entry = seen[3]
            else:
                entry = reader(vr, data, True, codec)  # type: ignore[arg-type]
                if entry is not None and entry is not _BULK_DATA \
                        and len(data) <= _LAST_LIMIT and (seen or len(last) < _MAX_KEYS):
                    last[tag] = (data, vr, codec, entry)
        elif bulk and not data and tag in bulk:
            continue  # a bulk value, never copied: nothing of it in the JSON
        else:
            entry = _entry(tag, vr, data, True, implicit, codec)
        if entry is _BULK_DATA:
            continue
        if entry is None:
            _bound_nesting(tag, vr, data, implicit)
            entry = finite_only(element_json(header.dataset[tag]))
            if entry is None:
                continue
            converted.add(key)
        out[key] = entry
    return out, converted


def _bound_nesting(tag: int, vr: str | None, data: bytes, implicit: bool) -> None:
    """Refuse a sequence nested past ``MAX_SEQUENCE_DEPTH`` that the JSON leaves to pydicom
    (``_sequence`` gave up on an item: a sequence of undefined length inside one, an item's
    own character set, a value it does not read), by the iterative look of
    ``codec/nesting.py`` before pydicom's recursive conversion: only on that slow path."""
    if not data or not (vr == "SQ" or (vr in (None, "UN") and (
            data[:4] == _ITEM_TAG or _implicit_vr(tag) == "SQ"))):
        return
    if nests_deeper_than(data, MAX_FRAMES, items_of=implicit):
        too_deep()


def _dataset_to_json(
    ds: Dataset, element_json: Callable[[Any], dict[str, Any] | None]
) -> tuple[dict[str, Any], set[str]]:
    """``header_to_json`` of a header pydicom read (its raw elements, where not yet read)."""
    charset = ds.get("SpecificCharacterSet", "") if 0x00080005 in ds else ""
    codec = _CODECS.get(str(charset).strip()) if not isinstance(charset, list) else None
    out: dict[str, Any] = {}
    converted: set[str] = set()
    keys = _KEYS
    # Dataset.items() yields the elements as stored, RawDataElement until first accessed.
    for tag, value in ds.items():
        key = keys.get(tag) or _key(tag)
        entry = _fast(value, codec) if type(value) is RawDataElement else None
        if entry is _BULK_DATA:
            continue
        if entry is None:
            if type(value) is RawDataElement and type(value.value) is bytes \
                    and value.is_little_endian:
                _bound_nesting(tag, value.VR, value.value, value.is_implicit_VR)
            entry = finite_only(element_json(ds[tag]))
            if entry is None:
                continue
            converted.add(key)
        out[key] = entry
    return out, converted


#: Specific Character Set (VR, value bytes) -> the codec of _CODECS, None for any other.
_CHARSET_CODECS: dict[tuple[str | None, bytes], str | None] = {}


def _codec_of(vr: str | None, value: bytes) -> str | None:
    """The codec of a Specific Character Set as pydicom reads its raw element (CS: split at
    backslashes, spaces trimmed; more than one value is ISO 2022: pydicom's business), as
    ``_dataset_to_json`` takes it; the same bytes give the same answer, so it is kept."""
    codec = _CHARSET_CODECS.get((vr, value), _UNKNOWN)
    if codec is _UNKNOWN:
        raw = RawDataElement(BaseTag(0x00080005), vr, len(value),  # type: ignore[arg-type]
                             value or empty_value_for_VR(vr, raw=True), 0, vr is None, True)
        charset = convert_raw_data_element(raw).value
        if charset is None:
            charset = ""
        codec = _CODECS.get(str(charset).strip()) if not isinstance(charset, list) else None
        if len(_CHARSET_CODECS) < 64:
            _CHARSET_CODECS[(vr, value)] = codec
    return codec  # type: ignore[return-value]


_UNKNOWN = object()


#: Tag -> the value bytes, VR and codec of the last element of that tag read by a plain
#: VR reader, and the entry it gave. The instances of one series arrive one after another
#: and share most of their header (patient, study, series, equipment, most private
#: elements): a value equal to the last one of its tag gets the same entry without being
#: read again (a bytes comparison instead of a decode, a split and new lists). The entries
#: are shared between documents, so nothing may change a document's entries in place
#: (nothing does: a document is read for the index keys and written as JSON text).
#: Bounded as the keys are, and to short values, so the memory stays small.
_LAST: dict[int, tuple[bytes, str, str | None, dict[str, Any]]] = {}
_LAST_LIMIT = 256

#: Tag -> its DICOM JSON key ("0020000D"): formatting it anew costs ~0.2 µs an element.
_KEYS: dict[int, str] = {}
#: Bounded: a stream of odd private tags must not grow the cache for ever.
_MAX_KEYS = 8192


def _key(tag: int) -> str:
    key = f"{tag:08X}"
    if len(_KEYS) < _MAX_KEYS:
        _KEYS[tag] = key
    return key


def finite_only(entry: Entry) -> Entry:
    """``entry`` without what DICOM JSON cannot hold: None if a value of its own is NaN or
    infinite, else the entry with every such element left out of its sequence items."""
    if entry is None:
        return None
    values = entry.get("Value")
    if not values:
        return entry
    if entry.get("vr") == "SQ":
        return {**entry, "Value": [_finite_item(item) for item in values]}
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        return None
    return entry


def _finite_item(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    kept = {}
    for key, element in item.items():
        entry = finite_only(element) if isinstance(element, dict) else element
        if entry is not None:
            kept[key] = entry
    return kept


def _fast(raw: RawDataElement, codec: str | None) -> Entry:
    """The entry of a pydicom raw element, or None for "let pydicom do it"."""
    value = raw.value
    if value is None:
        if raw.length:  # of undefined length too: pydicom read no more than its defer size
            return _BULK_DATA  # deferred: a bulk value pydicom did not read (codec/header.py)
        value = b""
    elif type(value) is not bytes:
        return None
    return _entry(raw.tag, raw.VR, value, raw.is_little_endian, raw.is_implicit_VR, codec)


def _entry(tag: int, vr: str | None, data: bytes, little: bool, implicit: bool,
           codec: str | None, depth: int = 0) -> Entry:
    """The entry of one element from its value bytes, or None for "let pydicom do it".
    ``depth``: how many sequences hold it."""
    if not tag & 0xFFFF:
        return None  # group lengths: pydicom's rules
    if vr is None:
        if tag & 0x10000:
            return None  # implicit VR private element: pydicom makes it UN
        vr = _IMPLICIT_VRS.get(tag)
        if vr is None:
            vr = _implicit_vr(tag)
        if not vr:
            return None
    reader = _READERS.get(vr)
    if reader is None:
        if vr == "SQ":
            return _sequence(data, little, implicit, codec, depth + 1)
        return None
    if not data:
        return {"vr": vr} if vr != "IS" and vr != "DS" else None
    return reader(vr, data, little, codec)


#: Tag -> the VR of the data dictionary, "" for none: an implicit VR header looks up each
#: element (~1 µs in pydicom's dictionary); bounded as the keys are.
_IMPLICIT_VRS: dict[int, str] = {}


def _implicit_vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        vr = ""
    if len(_IMPLICIT_VRS) < _MAX_KEYS:
        _IMPLICIT_VRS[tag] = vr
    return vr


def _sequence(data: bytes, little: bool, implicit: bool, codec: str | None,
              depth: int) -> Entry:
    """A sequence whose every item's element is read here, else None.

    Items inherit the character set of the header; one with its own is left to pydicom. An
    item of undefined length is found whole by the structure walk's rules (its elements
    then read as one of defined length): pydicom made a ``Dataset`` of each (a sequence
    of many small items cost tens of MB).

    ``depth``: this sequence's, 1 at the top level. Past ``MAX_SEQUENCE_DEPTH`` the data set
    is refused (``NestedTooDeep``): this is the ingest's one walk into sequences of defined
    length, so the bound costs a comparison a sequence (the structure walk bounds those of
    undefined length). The recursion stays within some 130 frames.
    """
    if depth > MAX_SEQUENCE_DEPTH:
        too_deep()
    if not data:
        return {"vr": "SQ", "Value": []}
    if not little:
        return None
    view = memoryview(data)
    size, pos = len(data), 0
    items: list[dict[str, Any]] = []
    keys = _KEYS
    while pos < size:
        if pos + 8 > size:
            return None
        group, number, length = _ITEM_HEADER.unpack_from(view, pos)
        if (group, number) != (0xFFFE, 0xE000):
            return None
        if length == 0xFFFFFFFF:
            ended = undefined_item_end(view, pos + 8, implicit)
            if ended is None:
                return None
            content, end = view[pos + 8 : ended - 8], ended
        else:
            end = pos + 8 + length
            if end > size:
                return None
            content = view[pos + 8 : end]
        elements = scan_elements(content, implicit, False)
        if elements is None or 0x00080005 in elements:
            return None
        item: dict[str, Any] = {}
        for tag, (vr, value, _start) in elements.items():
            entry = _entry(tag, vr, value, True, implicit, codec, depth)
            if entry is None:
                return None
            if entry is not _BULK_DATA:
                item[keys.get(tag) or _key(tag)] = entry
        items.append(item)
        pos = end
    return {"vr": "SQ", "Value": items}


def _inline_binary(vr: str, data: bytes, _little: bool, _codec: str | None) -> Entry:
    """OB, OW, ...: pydicom keeps their bytes as they are; the index leaves bulk data out."""
    if len(data) > _INLINE_BINARY_LIMIT:
        return _BULK_DATA
    return {"vr": vr, "InlineBinary": base64.b64encode(data).decode("ascii")}


def _person_name(vr: str, data: bytes, _little: bool, codec: str | None) -> Entry:
    """Person names of one component group (no ``=``); others are pydicom's business."""
    if codec is None:
        return None
    try:
        text = data.decode(codec).rstrip(" \x00")
    except UnicodeDecodeError:
        return None
    if not text:
        return {"vr": vr}
    if "=" in text or "\x1b" in text or "\x00" in text:
        return None
    values = text.split("\\")
    if not all(values):
        return None
    return {"vr": vr, "Value": [{"Alphabetic": value} for value in values]}


def _ascii(vr: str, data: bytes, _little: bool, _codec: str | None) -> Entry:
    try:
        return _text_entry(vr, data.decode("ascii"))
    except UnicodeDecodeError:
        return None


def _coded(vr: str, data: bytes, _little: bool, codec: str | None) -> Entry:
    if codec is None:
        return None
    try:
        return _text_entry(vr, data.decode(codec))
    except UnicodeDecodeError:
        return None


def _text_entry(vr: str, text: str) -> Entry:
    """Plain text values; spaces around a value or NUL inside go to pydicom, whose
    trimming differs by VR."""
    if "\x1b" in text:
        return None
    if vr == "UI":
        text = text.rstrip("\x00 ").lstrip(" ")
    elif "\x00" in text:
        return None
    else:
        text = text.rstrip(" ")
    if vr in _SINGLE_VALUED:
        return {"vr": vr, "Value": [text]} if text else {"vr": vr}
    if not text:
        return {"vr": vr}
    values = text.split("\\")
    if " " in text and any(value != value.strip(" ") for value in values):
        return None
    if vr == "UI":  # pydicom's validation decides about malformed UIDs
        if len(values) == 1:
            if not text.replace(".", "").isdigit():
                return None
        elif any(not v.replace(".", "").isdigit() for v in values if v):
            return None
    return {"vr": vr, "Value": values}


def _binary_reader(typecode: str, size: int, floating: bool) -> Reader:
    if array(typecode).itemsize != size:  # pragma: no cover - exotic platforms
        raise RuntimeError(f"array typecode {typecode} is not {size} bytes here")

    single = struct.Struct("<" + typecode)
    if single.size != size:  # pragma: no cover - struct's standard sizes are fixed
        raise RuntimeError(f"struct format {typecode} is not {size} bytes")
    one = single.unpack

    def read(vr: str, data: bytes, little: bool, _codec: str | None) -> Entry:
        count = len(data)
        if count == size and little:  # most such elements hold one value
            value = one(data)[0]
            if floating and not math.isfinite(value):
                return None
            return {"vr": vr, "Value": [value]}
        if count % size:
            return None
        values = array(typecode, data)
        if little != _LITTLE_ENDIAN_HOST:
            values.byteswap()
        numbers = values.tolist()
        if floating and not all(map(math.isfinite, numbers)):
            return None
        return {"vr": vr, "Value": numbers}

    return read


def _number_strings(vr: str, data: bytes, _little: bool, _codec: str | None) -> Entry:
    """IS and DS: numbers in JSON, as pydicom's IS / DSfloat values serialize."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    if "\\" not in text:  # one value: what the general case below gives, in fewer steps
        part = text.strip(" \x00")
        if not part:
            return {"vr": vr}
        try:
            number: int | float = int(part) if vr == "IS" else float(part)
        except ValueError:
            return None
        if vr == "DS" and not math.isfinite(number):
            return None
        return {"vr": vr, "Value": [number]}
    try:
        parts = [p.strip(" \x00") for p in text.split("\\")]
        if vr == "IS":
            values: list[Any] = [int(p) if p else None for p in parts]
        else:
            values = [float(p) if p else None for p in parts]
    except (UnicodeDecodeError, ValueError):
        return None
    if len(values) > 1 and None in values:
        return None  # an empty value among others: pydicom's rules (it refuses some)
    if vr == "DS" and not all(math.isfinite(v) for v in values if v is not None):
        return None
    if all(v is None for v in values):
        return {"vr": vr}
    return {"vr": vr, "Value": values}


_ITEM_HEADER = struct.Struct("<HHL")
_ITEM_TAG = b"\xfe\xff\x00\xe0"
#: pydicom's rule for a 1 KiB bulk data threshold: base64 of more than 768 bytes.
_INLINE_BINARY_LIMIT = (1024 // 4) * 3
#: The entry of an element the index leaves out (bulk data).
_BULK_DATA: dict[str, Any] = {}

_READERS: dict[str, Reader] = {
    **dict.fromkeys(("OB", "OW", "OD", "OF", "OL", "OV"), _inline_binary),
    "PN": _person_name,
    **dict.fromkeys(("AE", "AS", "CS", "DA", "DT", "TM", "UI"), _ascii),
    **dict.fromkeys(("LO", "SH", "LT", "ST", "UC", "UT"), _coded),
    "IS": _number_strings,
    "DS": _number_strings,
    "US": _binary_reader("H", 2, False),
    "SS": _binary_reader("h", 2, False),
    "UL": _binary_reader("I", 4, False),
    "SL": _binary_reader("i", 4, False),
    "FL": _binary_reader("f", 4, True),
    "FD": _binary_reader("d", 8, True),
    "UV": _binary_reader("Q", 8, False),
    "SV": _binary_reader("q", 8, False),
}


def json_text(document: dict[str, Any]) -> str:
    """``document`` as compact JSON text, with orjson (about 8x faster than ``json`` on a CT
    header: some 0.3 ms per C-STORE); non-ASCII characters are written as UTF-8, not
    escaped. What orjson refuses (an integer beyond 64 bits, a lone surrogate) is written
    by ``json``, as before."""
    try:
        return orjson.dumps(document).decode()
    except (orjson.JSONEncodeError, UnicodeDecodeError):
        return _JSON.encode(document)


_JSON = json.JSONEncoder(separators=(",", ":"), check_circular=False)
