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
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from mimic_server.archive.inflated import inflated_pieces
from mimic_server.codec.implicit_stream import implicit_pieces
from mimic_server.errors import CannotUnderstand
from tests.data import storable_files

_EXPLICIT_FILES = [f for f in storable_files()
                   if f.transfer_syntax_uid in (ExplicitVRLittleEndian,
                                                DeflatedExplicitVRLittleEndian)]


def _cut(data: bytes, size: int) -> Iterator[bytes]:
    return iter([data[i:i + size] for i in range(0, len(data), size)])


def _implicit(data: bytes, piece: int = 997, size: int = 4096) -> bytes:
    return b"".join(implicit_pieces(_cut(data, piece), size))


def _read_implicit(data: bytes) -> Dataset:
    fp = DicomBytesIO(data)
    fp.is_little_endian, fp.is_implicit_VR = True, True
    return read_dataset(fp, True, True)


def _encoded(ds: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _differences(a: Dataset, b: Dataset, where: str = "") -> list[str]:
    """Where two data sets differ: a value compared as its bytes, else (pydicom writes a
    value again from what it parsed: padding trimmed) as what pydicom reads; sequences item
    by item, whatever their lengths' encoding."""
    found = []
    # Raw, before any value is converted: iterating a Dataset would convert them.
    raw_a = {t: a.get_item(t) for t in a.keys()}  # noqa: SIM118
    raw_b = {t: b.get_item(t) for t in b.keys()}  # noqa: SIM118
    found += [f"{where}{t} in one only" for t in set(raw_a) ^ set(raw_b)]
    for tag in sorted(set(raw_a) & set(raw_b)):
        ra, rb = raw_a[tag], raw_b[tag]
        if (isinstance(ra.value, bytes) and isinstance(rb.value, bytes)
                and ra.value == rb.value and ra.VR != "SQ"):
            continue
        va, vb = a[tag].value, b[tag].value
        if isinstance(va, Sequence) and isinstance(vb, Sequence) and len(va) == len(vb):
            for i, (x, y) in enumerate(zip(va, vb, strict=True)):
                found += _differences(x, y, f"{where}{tag}[{i}].")
        elif va != vb:
            found.append(f"{where}{tag}")
    return found


@pytest.mark.parametrize("stored", _EXPLICIT_FILES, ids=lambda f: f.path.name)
def test_every_shipped_explicit_file_reads_as_pydicom_converts_it(stored: object) -> None:
    path, syntax = stored.path, stored.transfer_syntax_uid  # type: ignore[attr-defined]
    data = stored.dataset_bytes()  # type: ignore[attr-defined]
    pieces: Iterator[bytes] = _cut(data, 997)
    if syntax == DeflatedExplicitVRLittleEndian:
        pieces = inflated_pieces(pieces, 1000)
    ours = b"".join(implicit_pieces(pieces, 4096))
    theirs = _encoded(pydicom.dcmread(path), implicit=True)
    assert _differences(_read_implicit(ours), _read_implicit(theirs)) == []


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
    explicit = _encoded(ds, implicit=False)
    assert (b"\xff\xff\xff\xff" in explicit) == undefined

    ours = b"".join(implicit_pieces(_cut(explicit, piece), size))

    theirs = _read_implicit(_encoded(ds, implicit=True))
    read = _read_implicit(ours)
    assert _differences(read, theirs) == []
    # The group length in an item is left out, as pydicom leaves it out: it was wrong now.
    assert 0x00080000 not in read.ContentSequence[0].ConceptNameCodeSequence[0]
    expected_pieces = -(-len(ours) // size)
    assert [len(p) for p in implicit_pieces(_cut(explicit, piece), size)] == (
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
    ds = _read_implicit(ours)
    assert str(ds.RequestAttributesSequence[0].PatientName) == "Doe^J"


def test_a_data_set_read_as_implicit_is_copied_whole() -> None:
    data = _implicit_element(0x00080016, b"1.2\0") + _implicit_element(0x00100020, b"ID")
    assert _implicit(data, piece=5, size=3) == data


def test_deep_nesting_does_not_recurse() -> None:
    data = b""
    for _ in range(5_000):  # Python's default recursion limit is 1,000
        data = _explicit(0x0040A730, b"SQ", _implicit_element(ITEM, data))
    ours = _implicit(data, piece=1 << 16, size=1 << 16)
    assert ours.count(b"\xfe\xff\xdd\xe0") == 5_000
    assert len(ours) == 5_000 * (8 + 8 + 8 + 8)


@pytest.mark.parametrize(("data", "why"), [
    (_explicit(0x7FE00010, b"OB", b"")[:8] + b"\xff\xff\xff\xff", "undefined length"),
    (_explicit(0x00100020, b"LO", b"ID") + struct.pack("<HH2sH", 0x0010, 0x0030, b"ZZ", 2)
     + b"AB", "unknown VR"),
    (_explicit(0x00100010, b"PN", b"Doe^J ")[:-2], "overruns"),
    (_explicit(0x00100010, b"PN", b"Doe^J ") + b"\x10\x00", "ends within"),
    (_explicit(0x0040A730, b"SQ", _implicit_element(ITEM, _explicit(0x00100020, b"LO", b"ID"),
                                                    4)), "overruns its sequence item"),
    (_implicit_element(ITEM_END, b"")[:4] + b"UL\0\0" + _explicit(0x00100020, b"LO", b"ID"),
     "outside an item"),
    (_explicit(0x0040A730, b"SQ", _explicit(0x00100020, b"LO", b"ID")), "where a sequence"),
], ids=["encapsulated", "unknown VR", "value cut", "header cut", "item overrun",
        "item end at top level", "element among items"])
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
    explicit = _encoded(ds, implicit=False)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = deflater.compress(explicit) + deflater.flush()
    ours = b"".join(implicit_pieces(inflated_pieces(_cut(deflated, 100), 333), 512))
    assert ours == _implicit(explicit)
