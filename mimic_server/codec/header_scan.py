"""A fast reader for the common header: little endian, its elements of defined length or
sequences of undefined length.

pydicom's ``read_dataset`` costs about 8 µs an element in Python (2 ms for a CT header of
256 elements), a fifth of a small C-STORE. Almost every header a modality sends is explicit
or implicit VR little endian up to Pixel Data; for those this module reads the elements in
a fraction of that (a sequence of undefined length found whole by the structure walk's
rules and kept as one value). Anything else (big endian, another value of undefined length,
an unknown VR, a VR encoding other than the transfer syntax's, a truncated element) returns
``None`` and pydicom reads the header itself, with all its own rules, under the same bounds
(``codec/header.py``).

What the scan keeps is a :class:`ScannedHeader`: per element a plain tuple of its VR, value
bytes and offset. The index's DICOM JSON is written from those tuples directly
(``codec/dicom_json.py``); the pydicom ``Dataset`` of raw elements that pydicom's own reader
would have built (a ``RawDataElement`` and a ``BaseTag`` per element, some 0.5 µs each) is
made only when something needs pydicom: an element the fast JSON leaves to it, an index key
it cannot take from the JSON. A usual header never builds it.
"""

from __future__ import annotations

import struct

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import _dictionary_vr_fast
from pydicom.dataelem import RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from mimic_server.codec.structure import undefined_length_end
from mimic_server.errors import CannotUnderstand, OutOfResources

_PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
_SPECIFIC_CHARACTER_SET = 0x00080005
_UNDEFINED = 0xFFFFFFFF
_NOT_IN_A_DATA_SET = frozenset({0x0000, 0x0002})
#: The VRs pydicom knows, by their two bytes: the explicit VR header's length field size.
_VR_LONG = {str(vr).encode(): str(vr) for vr in VR if vr in EXPLICIT_VR_LENGTH_32}
_VR_SHORT = {str(vr).encode(): str(vr) for vr in VR if vr not in EXPLICIT_VR_LENGTH_32}
_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHL")
_LENGTH_32 = struct.Struct("<L")

#: One scanned element: its VR (None in implicit VR), its value bytes (b"" when empty) and
#: the offset of the value in what was scanned.
Scanned = tuple["str | None", bytes, int]

#: A header element whose value is longer than this is bulk data: its value is not copied
#: out of the data set (which may be a spooled file of gigabytes: an Encapsulated PDF, STL
#: or CDA document, a large private blob before Pixel Data), and the index's DICOM JSON
#: leaves it out, as it leaves out binary values over 768 bytes. Sequences have their own
#: bound (:data:`HEADER_SEQUENCES`).
LARGEST_HEADER_VALUE = 64 * 1024
#: Values longer than this (not sequences, nor binary) are copied while they total at most
#: :data:`HEADER_LONG_VALUES`; past it they are bulk data too. Without it a header of a
#: thousand 64 KiB values (a 64 MiB object) was copied whole, and its text put in the
#: index's JSON: memory as large as the object.
LONG_HEADER_VALUE = 1024
HEADER_LONG_VALUES = 1024 * 1024
#: Binary VRs (explicit): a value of theirs over ``LONG_HEADER_VALUE`` is bulk data at once,
#: not charged to ``HEADER_LONG_VALUES`` (the JSON leaves out binary values over 768 bytes,
#: so vendors' private blobs would only crowd out the texts that follow them).
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
#: A header whose elements take more than this, bulk data aside, is refused (0xA700), as
#: one of too many elements: what is left are values of at most 1 KiB, each of which the
#: JSON holds too. Real headers take some kilobytes; enhanced objects' per-frame groups are
#: sequences, bulk past their own bound.
MAX_HEADER_BYTES = 8 * 1024 * 1024
#: A Specific Character Set longer than this is refused (0xC000): a few defined terms of
#: at most 16 characters each is what the standard allows for; pydicom reads the element
#: whole, whatever its size, and makes a codec of every value (12 MB a MiB).
LONGEST_CHARACTER_SET = 1024
#: The header's sequences are read into the index's DICOM JSON in order while their encoded
#: bytes total at most this; one that does not fit is bulk data (a multi-frame object's
#: per-frame functional groups, a long report's content: in the stored object, of no use to
#: a query). Each element of an item costs the JSON some hundreds of bytes of memory, and
#: an element can be 8 bytes: this bounds what a header's sequences can make us hold.
HEADER_SEQUENCES = 1024 * 1024
#: More top-level elements than this and the header is refused (0xA700): the data
#: dictionary has some 5,000 public attributes, a real header a few hundred to a few
#: thousand elements; each costs the scan and the JSON some hundreds of bytes.
MAX_HEADER_ELEMENTS = 50_000
_ITEM_TAG = b"\xfe\xff\x00\xe0"
#: The VRs of a header element that may be a sequence (None: implicit VR).
_MAYBE_SEQUENCE = frozenset({"SQ", "UN", None})


class ScannedHeader:
    """A little endian header as scanned: elements by tag, in the order they came.

    ``dataset`` is the ``Dataset`` pydicom's ``read_dataset`` would have read (the same raw
    elements and original encoding), built on first use.
    """

    __slots__ = ("_dataset", "bulk", "elements", "implicit")

    def __init__(
        self, elements: dict[int, Scanned], implicit: bool, bulk: frozenset[int] = frozenset()
    ) -> None:
        self.elements = elements
        self.implicit = implicit
        #: Tags of bulk elements (:data:`LARGEST_HEADER_VALUE`, :data:`HEADER_LONG_VALUES`,
        #: :data:`HEADER_SEQUENCES`): in ``elements`` with an empty value, never copied;
        #: left out of the DICOM JSON.
        self.bulk = bulk
        self._dataset: Dataset | None = None

    def __len__(self) -> int:
        return len(self.elements)

    def __contains__(self, tag: int) -> bool:
        return tag in self.elements

    @property
    def dataset(self) -> Dataset:
        dataset = self._dataset
        if dataset is None:
            try:
                dataset = _dataset_of(self.elements, self.implicit)
            except Exception as exc:  # as parse_header, where pydicom read it at once
                raise CannotUnderstand("dataset cannot be parsed") from exc
            self._dataset = dataset
        return dataset


def scan_header(data: memoryview, implicit: bool) -> ScannedHeader | None:
    """The header up to Pixel Data, or ``None`` where pydicom must read it."""
    scanned = _scan(data, implicit, stop_at_pixel_data=True)
    return ScannedHeader(scanned[0], implicit, scanned[2]) if scanned is not None else None


def scan_header_to(data: memoryview, implicit: bool) -> tuple[ScannedHeader, int] | None:
    """``scan_header`` and the offset where the scan stopped (Pixel Data, or the end): the
    structure walk goes on from there (``codec/structure.check_structure_after``)."""
    scanned = _scan(data, implicit, stop_at_pixel_data=True)
    if scanned is None:
        return None
    return ScannedHeader(scanned[0], implicit, scanned[2]), scanned[1]


def read_little_endian_header(data: memoryview, implicit: bool) -> Dataset | None:
    """The header up to Pixel Data as pydicom's ``read_dataset`` reads it, or ``None``."""
    header = scan_header(data, implicit)
    return header.dataset if header is not None else None


def _dataset_of(elements: dict[int, Scanned], implicit: bool) -> Dataset:
    dataset = Dataset(_raw(elements, implicit))
    encoding: str | list[str] = default_encoding
    if _SPECIFIC_CHARACTER_SET in elements:
        charset = convert_raw_data_element(
            dataset._dict[BaseTag(_SPECIFIC_CHARACTER_SET)]  # type: ignore[arg-type]
        ).value
        encoding = convert_encodings(charset)  # type: ignore[arg-type]
    dataset.set_original_encoding(implicit, True, encoding)
    return dataset


def _raw(elements: dict[int, Scanned], implicit: bool) -> dict[BaseTag, RawDataElement]:
    """pydicom's raw elements of the scanned ones (its empty value for an empty one)."""
    raw: dict[BaseTag, RawDataElement] = {}
    for tag, (vr, value, start) in elements.items():
        base_tag = BaseTag(tag)
        length = len(value)
        raw[base_tag] = RawDataElement(
            base_tag, vr, length,  # type: ignore[arg-type]
            value if length else empty_value_for_VR(vr, raw=True), start, implicit, True,
        )
    return raw


def raw_elements(
    data: memoryview, implicit: bool, stop_at_pixel_data: bool
) -> dict[BaseTag, RawDataElement] | None:
    """The raw elements of a little endian dataset (a header, or a sequence item's)."""
    elements = scan_elements(data, implicit, stop_at_pixel_data)
    return _raw(elements, implicit) if elements is not None else None


def scan_elements(
    data: memoryview, implicit: bool, stop_at_pixel_data: bool
) -> dict[int, Scanned] | None:
    """The elements of a little endian dataset (a header, or a sequence item's)."""
    scanned = _scan(data, implicit, stop_at_pixel_data)
    return scanned[0] if scanned is not None else None


def _scan(
    data: memoryview, implicit: bool, stop_at_pixel_data: bool
) -> tuple[dict[int, Scanned], int, frozenset[int]] | None:
    """The elements, where the scan stopped and the tags of a header's bulk elements
    (:data:`LARGEST_HEADER_VALUE`). A header (``stop_at_pixel_data``) holding an element
    of group 0000 or 0002 is left to pydicom (and refused by the structure walk): such
    elements belong to a command or the File Meta, never to a data set. So are elements
    whose tags do not ascend (PS3.5 7.1), the walk refusing them: the walk then needs the
    scan's last tag only, not a second look at its elements.

    A header's sequence of undefined length is found whole by the structure walk's rules
    (``undefined_length_end``) and kept as one of defined length, its items' bytes as its
    value, as pydicom would convert it: without it such a header, common from modalities,
    went to pydicom, which reads every item of one whatever its size."""
    size = data.nbytes
    if size >= 6:
        # pydicom looks at the first element to tell explicit from implicit VR: so do we,
        # and leave the odd object that disagrees with its transfer syntax to pydicom.
        looks_explicit = 0x40 < data[4] < 0x5B and 0x40 < data[5] < 0x5B
        if looks_explicit == implicit:
            return None
    elements: dict[int, Scanned] = {}
    bulk: list[int] = []
    if stop_at_pixel_data:
        # What the bounds look at: a long value, or a possible sequence (explicit SQ or UN;
        # in implicit VR any element); past count_from bytes, the number of elements (each
        # takes 8 bytes at least, so there cannot be too many before) and what they take.
        largest, maybe_sequence = LONG_HEADER_VALUE, _MAYBE_SEQUENCE
        count_from = 8 * MAX_HEADER_ELEMENTS
    else:
        largest, maybe_sequence, count_from = _UNDEFINED, frozenset(), _UNDEFINED
    sequences_left = HEADER_SEQUENCES
    long_values_left = HEADER_LONG_VALUES
    not_copied = 0  # bytes of bulk values
    pos = 0
    last = -1  # the tag before: elements come in ascending order, each once (PS3.5 7.1)
    vr: str | None = None
    unpack_implicit = _IMPLICIT.unpack_from
    unpack_explicit = _EXPLICIT.unpack_from
    short_vrs = _VR_SHORT
    while pos + 8 <= size:
        if implicit:
            group, number, length = unpack_implicit(data, pos)
            start = pos + 8
        else:
            group, number, vr_bytes, length = unpack_explicit(data, pos)
            vr = short_vrs.get(vr_bytes)
            if vr is not None:
                start = pos + 8
            else:
                vr = _VR_LONG.get(vr_bytes)
                if vr is None or pos + 12 > size:
                    return None
                length = _LENGTH_32.unpack_from(data, pos + 8)[0]
                start = pos + 12
        tag = group << 16 | number
        if tag <= last:
            return None  # out of order or repeated: pydicom's (a header's refused by the walk)
        last = tag
        if stop_at_pixel_data and tag in _PIXEL_DATA_TAGS:
            break
        if length == _UNDEFINED:
            if not stop_at_pixel_data or group in _NOT_IN_A_DATA_SET or group == 0xFFFE:
                return None
            if tag == _SPECIFIC_CHARACTER_SET:
                _refuse_character_set(length)
            end = (undefined_length_end(data, start, implicit)
                   if read_as_sequence(data, start, tag, vr) else None)
            if end is None:
                return None  # not a sequence, or not well formed: pydicom's (and refused)
            if end - start <= sequences_left:
                sequences_left -= end - start
                elements[tag] = ("SQ", data[start : end - 8].tobytes(), start)
            else:
                not_copied += end - start
                elements[tag] = ("SQ", b"", start)
                bulk.append(tag)
            check_bounds(len(elements), end - not_copied)
            pos = end
            continue
        end = start + length
        if end > size or group == 0xFFFE:
            return None
        if stop_at_pixel_data and group in _NOT_IN_A_DATA_SET:
            return None
        if (length > largest or vr in maybe_sequence) and length:
            if tag == _SPECIFIC_CHARACTER_SET:
                _refuse_character_set(length)
            if vr == "SQ" or (vr in maybe_sequence and data[start] == 0xFE
                              and data[start : start + 4] == _ITEM_TAG):
                # A sequence (in implicit VR, or sent as UN, told by its first item's tag;
                # the value of any other VR is not read: a mapped spool file's page).
                fits = length <= sequences_left
                if fits:
                    sequences_left -= length
            elif length <= largest:  # in implicit VR every element comes here
                fits = True
            elif vr in BINARY_VRS:
                fits = False  # the JSON leaves out binary values over 768 bytes anyway
            else:
                fits = length <= LARGEST_HEADER_VALUE and length <= long_values_left
                if fits:
                    long_values_left -= length
            if fits:
                elements[tag] = (vr, data[start:end].tobytes(), start)
            else:  # bulk data: not copied
                elements[tag] = (vr, b"", start)
                bulk.append(tag)
                not_copied += length
        else:
            elements[tag] = (vr, data[start:end].tobytes(), start)
        if pos >= count_from:
            check_bounds(len(elements), end - not_copied)
        pos = end
    if not stop_at_pixel_data and pos != size:
        return None  # trailing bytes in an item: pydicom's rules
    return elements, pos, frozenset(bulk)


def check_bounds(elements: int, copied: int) -> None:
    """Refuse a header past ``MAX_HEADER_ELEMENTS`` or ``MAX_HEADER_BYTES`` (bulk aside)."""
    if elements > MAX_HEADER_ELEMENTS:
        raise OutOfResources(f"the header has more than {MAX_HEADER_ELEMENTS} elements")
    if copied > MAX_HEADER_BYTES:
        raise OutOfResources(
            f"the header takes more than {MAX_HEADER_BYTES} bytes, bulk data aside")


def read_as_sequence(data: memoryview, start: int, tag: int, vr: str | None) -> bool:
    """Whether pydicom reads a value of undefined length starting at ``start`` as a sequence:
    SQ, UN, or in implicit VR (``vr`` None) one the dictionary calls SQ or, unknown to it,
    whose first item says so. Any other it reads to its delimiter, keeping no more of it
    than its defer size."""
    if vr is None:
        try:
            return _dictionary_vr_fast(tag) == "SQ"
        except KeyError:
            return data[start : start + 4] == _ITEM_TAG
    return vr == "SQ" or vr == "UN"


def _refuse_character_set(length: int) -> None:
    """A Specific Character Set over :data:`LONGEST_CHARACTER_SET` (of undefined length
    too), whatever its VR or bytes: pydicom reads it whole, never deferred."""
    if length > LONGEST_CHARACTER_SET:
        raise CannotUnderstand(
            f"Specific Character Set is longer than {LONGEST_CHARACTER_SET} bytes")
