"""codec/nesting.py: how deep a stored data set's sequences nest, looked at before pydicom,
whose recursive encoder a few kilobytes nested 250 levels deep take down, is given it whole.
Every shipped file is within the bound; deep nesting is found in either VR encoding, with
defined or undefined lengths, in any depth of Python stack; Deflated and Big Endian data sets,
never given to pydicom, are refused unlooked at."""

from __future__ import annotations

import struct

import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from mimic_server.codec.header import read_checked_header, read_header
from mimic_server.codec.header_scan import scan_header
from mimic_server.codec.implicit_stream import MAX_NESTING
from mimic_server.codec.nesting import (
    MAX_FRAMES,
    MAX_SEQUENCE_DEPTH,
    NestedTooDeep,
    nests_deeper_than,
)
from mimic_server.codec.structure import check_structure
from mimic_server.dimse.raw_send import refuse_if_too_deep
from mimic_server.errors import CannotUnderstand
from mimic_server.index.attributes import header_json
from tests.data import storable_files

_ITEM, _ITEM_END, _SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)


def _implicit(tag: tuple[int, int], value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHL", *tag, len(value) if length is None else length) + value


def _sq(value: bytes, implicit: bool, length: int | None = None) -> bytes:
    size = len(value) if length is None else length
    if implicit:
        return struct.pack("<HHL", 0x0040, 0xA730, size) + value
    return struct.pack("<HH2s2xL", 0x0040, 0xA730, b"SQ", size) + value


def nested(levels: int, implicit: bool, undefined: bool) -> bytes:
    data = struct.pack("<HH2sH", 0x0010, 0x0020, b"LO", 2) + b"ID" if not implicit else (
        _implicit((0x0010, 0x0020), b"ID"))
    for _ in range(levels):
        if undefined:
            item = _implicit(_ITEM, b"", 0xFFFFFFFF) + data + _implicit(_ITEM_END, b"")
            data = _sq(item + _implicit(_SEQ_END, b""), implicit, 0xFFFFFFFF)
        else:
            data = _sq(_implicit(_ITEM, data), implicit)
    return _implicit((0x0008, 0x0016), b"1.2\0") + data if implicit else (
        struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 4) + b"1.2\0" + data)


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("undefined", [True, False], ids=["undefined", "defined"])
def test_nesting_is_counted_in_frames_of_sequence_and_item(implicit: bool, undefined: bool) -> None:
    data = nested(100, implicit, undefined)  # 100 sequences, 100 items: 200 frames + top
    assert not nests_deeper_than(data, 201)
    assert nests_deeper_than(data, 200)
    assert nests_deeper_than(nested(250, implicit, undefined), MAX_NESTING)
    # Far past Python's recursion limit, in constant stack.
    assert nests_deeper_than(nested(5_000, implicit, undefined), MAX_NESTING)


def test_an_undefined_length_un_and_an_item_read_as_implicit_count_too() -> None:
    """Explicit VR whose items are implicit by their first element, under a UN."""
    inner = _implicit((0x0010, 0x0020), b"ID")
    for _ in range(30):
        inner = _implicit((0x0040, 0xA730), _implicit(_ITEM, inner))  # implicit inside
    data = struct.pack("<HH2s2xL", 0x0009, 0x1010, b"UN", 0xFFFFFFFF) + _implicit(
        _ITEM, inner) + _implicit(_SEQ_END, b"")
    assert nests_deeper_than(data, 60)
    assert not nests_deeper_than(data, 63)


#: Deflated and Big Endian data sets are never given to pydicom, so not looked at (``raw_send``).
_LOOKED_AT = [f for f in storable_files()
              if f.transfer_syntax_uid not in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)]


@pytest.mark.parametrize("stored", _LOOKED_AT, ids=lambda f: f.path.name)
def test_every_shipped_file_is_within_the_bound(stored: object) -> None:
    refuse_if_too_deep(stored.dataset_bytes(), (False, True, False))  # type: ignore[attr-defined]


@pytest.mark.parametrize("encoding", [(False, True, True), (False, False, False)],
                         ids=["deflated", "big endian"])
def test_a_deflated_or_big_endian_data_set_is_refused_unlooked_at(
    encoding: tuple[bool, bool, bool]
) -> None:
    """Their conversions are made without pydicom (Deflated: ``dimse/recoders``) or never
    asked for (Big Endian); should one reach pydicom, it is refused, not looked at."""
    with pytest.raises(CannotUnderstand, match="Deflated or Big Endian"):
        refuse_if_too_deep(b"\x00\x08\x00\x16UI\x00\x041.2\x00", encoding)


def test_a_data_set_that_runs_out_ends_the_look() -> None:
    assert not nests_deeper_than(b"\x10\x00\x20\x00LO", 1)


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_what_pydicom_reads_as_items_counts_whatever_its_tag(implicit: bool) -> None:
    """pydicom reads any header among a sequence's items as an item, and a known sequence
    (here Content Sequence) as one whatever its value starts with; a look that stopped at
    either missed 400 levels (review)."""
    data = _implicit((0x0010, 0x0020), b"ID") if implicit else (
        struct.pack("<HH2sH", 0x0010, 0x0020, b"LO", 2) + b"ID")
    for _ in range(400):
        data = _sq(_implicit((0xFFFE, 0xE001), data), implicit)  # not an Item tag
    # Read by its first element, whatever the syntax declares, as pydicom reads it.
    assert nests_deeper_than(data, MAX_NESTING)


# -- the door: MAX_SEQUENCE_DEPTH, bounded by the walks ingest makes anyway --------------


def _with_pixels_after(data: bytes, implicit: bool) -> bytes:
    """``nested``'s data set with its nested sequence moved after a small Pixel Data, under
    (FFFA,FFFA) Digital Signatures Sequence: where the header's JSON never reads."""
    pixels = struct.pack("<HHL", 0x7FE0, 0x0010, 4) + bytes(4) if implicit else (
        struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OB", 4) + bytes(4))
    head = 12  # (0008,0016) of 4 bytes: an 8-byte header either way
    sequence = data[head:]
    tag = struct.pack("<HH", 0xFFFA, 0xFFFA)
    return data[:head] + pixels + tag + sequence[4:]


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("after_pixels", [False, True], ids=["header", "after Pixel Data"])
def test_the_structure_walk_bounds_undefined_length_nesting(
    implicit: bool, after_pixels: bool
) -> None:
    """Sequences and items of undefined length, which the receive walk enters anyway:
    refused one level past the limit wherever they are; at the limit, taken."""
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian

    def data(levels: int) -> memoryview:
        made = nested(levels, implicit, undefined=True)
        return memoryview(_with_pixels_after(made, implicit) if after_pixels else made)

    check_structure(data(MAX_SEQUENCE_DEPTH), syntax)
    read_checked_header(data(MAX_SEQUENCE_DEPTH), syntax)
    with pytest.raises(NestedTooDeep, match=f"nested deeper than {MAX_SEQUENCE_DEPTH}"):
        check_structure(data(MAX_SEQUENCE_DEPTH + 1), syntax)
    with pytest.raises(NestedTooDeep):
        read_checked_header(data(MAX_SEQUENCE_DEPTH + 1), syntax)


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("undefined", [True, False], ids=["undefined", "defined"])
def test_the_header_json_bounds_nesting_of_either_length(implicit: bool, undefined: bool) -> None:
    """Sequences of defined length, which only the index's JSON enters: refused there
    (the structure walk skips them), with its own reason; at the limit the JSON holds
    every level."""
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian

    def header(levels: int) -> object:
        data = memoryview(nested(levels, implicit, undefined))
        return scan_header(data, implicit) if not undefined else read_header(data, syntax)

    document = header_json(header(MAX_SEQUENCE_DEPTH))  # type: ignore[arg-type]
    levels, item = 0, document
    while "0040A730" in item:
        item, levels = item["0040A730"]["Value"][0], levels + 1
    assert levels == MAX_SEQUENCE_DEPTH
    if not undefined:
        with pytest.raises(NestedTooDeep):
            header_json(header(MAX_SEQUENCE_DEPTH + 1))  # type: ignore[arg-type]


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_a_sequence_the_json_leaves_to_pydicom_is_looked_at_first(implicit: bool) -> None:
    """A sequence of undefined length inside an item of defined length: the JSON's fast
    reader gives up on the item (pydicom converts the whole sequence, by recursion), so the
    iterative look counts it before; the structure walk sees only the undefined levels."""
    def alternating(levels: int) -> memoryview:
        code = _implicit((0x0010, 0x0020), b"ID") if implicit else (
            struct.pack("<HH2sH", 0x0010, 0x0020, b"LO", 2) + b"ID")
        data = code
        for level in range(levels):
            if level % 2 == 0:
                item = _implicit(_ITEM, b"", 0xFFFFFFFF) + data + _implicit(_ITEM_END, b"")
                data = _sq(item + _implicit(_SEQ_END, b""), implicit, 0xFFFFFFFF)
            else:
                data = _sq(_implicit(_ITEM, data), implicit)
        top = _implicit((0x0008, 0x0016), b"1.2\0") if implicit else (
            struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 4) + b"1.2\0")
        return memoryview(top + data)

    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    header_json(read_checked_header(alternating(MAX_SEQUENCE_DEPTH), syntax))
    deep = read_checked_header(alternating(MAX_SEQUENCE_DEPTH + 1), syntax)  # walk: fine
    with pytest.raises(NestedTooDeep):
        header_json(deep)


def test_the_door_is_below_what_every_sender_serves() -> None:
    assert MAX_FRAMES < MAX_NESTING
