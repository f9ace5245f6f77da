"""codec/implicit_stream.py: an Explicit VR Little Endian data set re-encoded in Implicit VR as
it streams. Held equal to pydicom's own conversion (read whole, written implicit) on every
shipped Explicit VR Little Endian and Deflated file, and on data sets built for the cases
the files lack (defined-length sequences and items, an undefined-length UN, an item pydicom
reads as implicit, deep nesting), however the input and output are cut; and every refusal.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from mimic_server.archive.inflated import inflated_pieces
from mimic_server.codec.implicit_stream import MAX_NESTING, implicit_pieces
from mimic_server.errors import CannotUnderstand
from tests.data import storable_files
from tests.data_sets import cut, differences, encoded, read

_EXPLICIT_FILES = [f for f in storable_files()
                   if f.transfer_syntax_uid in (ExplicitVRLittleEndian,
                                                DeflatedExplicitVRLittleEndian)]




def _implicit(data: bytes, piece: int = 997, size: int = 4096) -> bytes:
    return b"".join(implicit_pieces(cut(data, piece), size))








@pytest.mark.parametrize("stored", _EXPLICIT_FILES, ids=lambda f: f.path.name)
def test_every_shipped_explicit_file_reads_as_pydicom_converts_it(stored: object) -> None:
    path, syntax = stored.path, stored.transfer_syntax_uid  # type: ignore[attr-defined]
    data = stored.dataset_bytes()  # type: ignore[attr-defined]
    pieces: Iterator[bytes] = cut(data, 997)
    if syntax == DeflatedExplicitVRLittleEndian:
        pieces = inflated_pieces(pieces, 1000)
    ours = b"".join(implicit_pieces(pieces, 4096))
    theirs = encoded(pydicom.dcmread(path), implicit=True)
    assert differences(read(ours, True), read(theirs, True)) == []


def _nested() -> Dataset:
    """Three levels of sequences, defined and undefined lengths, empty ones, a group
    length inside an item, an odd-length value and an ambiguous VR."""
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-1", "SRT", "Odd"
    inner.add_new(0x00080000, "UL", 99)  # a group length: wrong once re-encoded
    middle = Dataset()
    middle.ConceptNameCodeSequence = Sequence([inner, Dataset()])
    middle.add_new(0x00283006, "OW", b"\x01\x02" * 300)  # LUT Data: US or OW
    middle.TextValue = "x" * 70_000  # a UT longer than a 16-bit length
    ds = Dataset()
    ds.PatientID = "NESTED"
    ds.ContentSequence = Sequence([middle, Dataset(), middle])
    ds.ReferencedImageSequence = Sequence()  # empty
    ds.add_new(0x00091010, "LO", "private")
    ds.add_new(0x7FE00010, "OW", bytes(range(256)) * 40)
    return ds


@pytest.mark.parametrize("undefined", [False, True], ids=["defined lengths", "undefined"])
@pytest.mark.parametrize(("piece", "size"), [(1, 1), (7, 5), (13, 16384), (1 << 20, 64)])
def test_sequences_of_every_length_encoding_however_cut(
    undefined: bool, piece: int, size: int
) -> None:
    ds = _nested()
    for element in (ds["ContentSequence"], ds["ContentSequence"][0]["ConceptNameCodeSequence"]):
        element.is_undefined_length = undefined
        for item in element.value:
            item.is_undefined_length_sequence_item = undefined
    explicit = encoded(ds, implicit=False)
    assert (b"\xff\xff\xff\xff" in explicit) == undefined

    ours = b"".join(implicit_pieces(cut(explicit, piece), size))

    theirs = read(encoded(ds, implicit=True), True)
    back = read(ours, True)
    assert differences(back, theirs) == []
    # The group length in an item is left out, as pydicom leaves it out: it was wrong now.
    assert 0x00080000 not in back.ContentSequence[0].ConceptNameCodeSequence[0]
    expected_pieces = -(-len(ours) // size)
    assert [len(p) for p in implicit_pieces(cut(explicit, piece), size)] == (
        [size] * (expected_pieces - 1) + [len(ours) - size * (expected_pieces - 1)])


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2s2xL", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _implicit_element(tag: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF,
                       len(value) if length is None else length) + value


ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


def test_content_already_implicit_is_copied_as_it_is() -> None:
    """An undefined-length UN (its content implicit VR, PS3.5 6.2.2) and an item of an
    explicit sequence whose first element is implicit (pydicom reads it implicit): both
    copied byte for byte, and pydicom reads the same values from either encoding."""
    implicit_item = _implicit_element(0x00100010, b"Doe^J ")
    un_content = (_implicit_element(ITEM, b"", 0xFFFFFFFF) + implicit_item
                  + _implicit_element(ITEM_END, b"") + _implicit_element(SEQ_END, b""))
    data = (
        _explicit(0x00080016, b"UI", b"1.2\0")
        + struct.pack("<HH2s2xL", 0x0009, 0x1010, b"UN", 0xFFFFFFFF) + un_content
        + _explicit(0x00400275, b"SQ", _implicit_element(ITEM, implicit_item))
        + _explicit(0x00100020, b"LO", b"ID")
    )
    ours = _implicit(data, piece=3, size=10)

    assert ours == (
        _implicit_element(0x00080016, b"1.2\0")
        + _implicit_element(0x00091010, b"", 0xFFFFFFFF) + un_content
        + _implicit_element(0x00400275, b"", 0xFFFFFFFF)
        + _implicit_element(ITEM, implicit_item) + _implicit_element(SEQ_END, b"")
        + _implicit_element(0x00100020, b"ID")
    )
    ds = read(ours, True)
    assert str(ds.RequestAttributesSequence[0].PatientName) == "Doe^J"


def test_a_data_set_read_as_implicit_is_copied_whole() -> None:
    data = _implicit_element(0x00080016, b"1.2\0") + _implicit_element(0x00100020, b"ID")
    assert _implicit(data, piece=5, size=3) == data


def test_deep_nesting_does_not_recurse_and_is_bounded() -> None:
    """100 levels re-encode; nesting past ``MAX_NESTING`` frames is refused where it is
    met, so a crafted data set (4 million levels deflate to 326 KiB) cannot grow the walk's
    stack, and what pydicom could not write (250 levels) is never attempted."""
    def nested(levels: int) -> bytes:
        data = b""
        for _ in range(levels):
            data = _explicit(0x0040A730, b"SQ", _implicit_element(ITEM, data))
        return data

    ours = _implicit(nested(100), piece=1 << 16, size=1 << 16)
    assert ours.count(b"\xfe\xff\xdd\xe0") == 100
    assert len(ours) == 100 * (8 + 8 + 8 + 8)
    assert 2 * 100 < MAX_NESTING < 2 * 250
    with pytest.raises(CannotUnderstand, match="nested too deep"):
        _implicit(nested(250), piece=1 << 16, size=1 << 16)


def _as_pydicom_converts(data: bytes) -> None:
    """The re-encoding of the explicit ``data``, cut everywhere, reads in pydicom as
    pydicom's own conversion does."""
    fp = DicomBytesIO(data)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    theirs = read(encoded(read_dataset(fp, False, True), implicit=True), True)
    for piece, size in ((1, 1), (3, 7), (len(data), 4096)):
        ours = read(_implicit(data, piece, size), True)
        assert differences(ours, theirs) == [], (piece, size)


_TAIL = _explicit(0x00100030, b"DA", b"20000101")
_ID = _explicit(0x00100020, b"LO", b"ID")


@pytest.mark.parametrize("data", [
    # PS3.5 6.2.2: an undefined-length UN is a sequence; this one's item is explicit VR
    struct.pack("<HH2s2xL", 0x0009, 0x1010, b"UN", 0xFFFFFFFF)
    + _implicit_element(ITEM, _ID) + _implicit_element(SEQ_END, b"") + _TAIL,
    struct.pack("<HH2s2xL", 0x0040, 0xA730, b"UN", 0xFFFFFFFF)
    + _implicit_element(ITEM, b"", 0xFFFFFFFF) + _ID + _implicit_element(ITEM_END, b"")
    + _implicit_element(SEQ_END, b"") + _TAIL,
    # a defined-length item that ends with an Item Delimitation Item anyway
    _explicit(0x0040A730, b"SQ", _implicit_element(ITEM, _ID + _implicit_element(ITEM_END, b"")))
    + _TAIL,
    # a defined-length sequence that ends with a Sequence Delimitation Item, bytes after it
    _explicit(0x0040A730, b"SQ", _implicit_element(ITEM, _ID) + _implicit_element(SEQ_END, b"")
              + b"\0" * 6) + _TAIL,
    # an element that switches to implicit VR within an item (pydicom reads it so)
    _explicit(0x0040A730, b"SQ", _implicit_element(ITEM, _ID + _implicit_element(0x00100021,
                                                                                b"XY")))
    + _TAIL,
    # a group length within an item, and a value of odd length
    _explicit(0x0040A730, b"SQ", _implicit_element(
        ITEM, _explicit(0x00100000, b"UL", b"\x0a\0\0\0") + _explicit(0x00100020, b"LO", b"ODD")))
    + _TAIL,
], ids=["UN, explicit item", "UN, undefined item", "item ends early", "sequence ends early",
        "switch to implicit", "group length in an item, odd length"])
def test_what_pydicom_reads_in_sequences_is_re_encoded_as_it_converts_it(data: bytes) -> None:
    _as_pydicom_converts(data)


def test_a_group_length_in_an_item_is_left_out_and_an_odd_value_kept() -> None:
    item = _explicit(0x00100000, b"UL", b"\x0a\0\0\0") + _explicit(0x00100020, b"LO", b"ODD")
    ours = _implicit(_explicit(0x0040A730, b"SQ", _implicit_element(ITEM, item)))
    assert ours == (_implicit_element(0x0040A730, b"", 0xFFFFFFFF)
                    + _implicit_element(ITEM, b"", 0xFFFFFFFF)
                    + _implicit_element(0x00100020, b"ODD")
                    + _implicit_element(ITEM_END, b"") + _implicit_element(SEQ_END, b""))


def test_encapsulated_pixel_data_in_a_native_syntax_is_copied_as_pydicom_writes_it() -> None:
    """Out of place in Explicit VR Little Endian, yet stored (the receive walk walks its
    items): its items copied as they are, behind an implicit header."""
    items = (_implicit_element(ITEM, b"") + _implicit_element(ITEM, b"\xff\xd8\xff\xd9")
             + _implicit_element(SEQ_END, b""))
    data = _TAIL + struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OB", 0xFFFFFFFF) + items
    assert _implicit(data, piece=3, size=5) == (
        _implicit_element(0x00100030, b"20000101")
        + _implicit_element(0x7FE00010, b"", 0xFFFFFFFF) + items)


@pytest.mark.parametrize(("data", "why"), [
    (_explicit(0x00100020, b"LO", b"ID") + struct.pack("<HH2sH", 0x0010, 0x0030, b"ZZ", 2)
     + b"AB", "unknown VR"),
    (_explicit(0x00100010, b"PN", b"Doe^J ")[:-2], "overruns"),
    (_explicit(0x00100010, b"PN", b"Doe^J ") + b"\x10\x00", "ends within"),
    (_explicit(0x0040A730, b"SQ", _implicit_element(ITEM, _explicit(0x00100020, b"LO", b"ID"),
                                                    4)), "overruns its sequence or item"),
    (_implicit_element(ITEM_END, b"")[:4] + b"UL\0\0" + _explicit(0x00100020, b"LO", b"ID"),
     "outside an item"),
    (_explicit(0x0040A730, b"SQ", _explicit(0x00100020, b"LO", b"ID")), "where a sequence"),
    # a Sequence Delimitation Item's header past the end of its defined-length sequence:
    # the rest to skip was negative, and the walk turned on the spot for ever (review)
    (_explicit(0x0040A730, b"SQ", b"\xfe\xff\xdd\xe0") + _TAIL, "overruns its sequence"),
], ids=["unknown VR", "value cut", "header cut", "item overrun",
        "item end at top level", "element among items", "delimiter past the end"])
def test_what_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(CannotUnderstand, match=why):
        _implicit(data)


def test_closing_it_closes_the_input() -> None:
    closed: list[bool] = []

    def pieces() -> Iterator[bytes]:
        try:
            yield _explicit(0x7FE00010, b"OW", bytes(1 << 20))
        finally:
            closed.append(True)

    converted = implicit_pieces(pieces(), 4096)
    assert len(next(converted)) == 4096
    converted.close()
    assert closed == [True]


def test_a_deflated_data_set_inflated_then_re_encoded() -> None:
    """What C-GET does for a Deflated object to an Implicit VR destination."""
    ds = _nested()
    explicit = encoded(ds, implicit=False)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = deflater.compress(explicit) + deflater.flush()
    ours = b"".join(implicit_pieces(inflated_pieces(cut(deflated, 100), 333), 512))
    assert ours == _implicit(explicit)
