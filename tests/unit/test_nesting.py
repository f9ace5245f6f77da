"""codec/nesting.py: how deep a stored data set's sequences nest, looked at before pydicom,
whose recursive encoder a few kilobytes nested 250 levels deep take down, is given it whole.
Every shipped file is within the bound; deep nesting is found in either VR encoding, with
defined or undefined lengths, in any depth of Python stack; Deflated and Big Endian data sets,
never given to pydicom, are refused unlooked at."""

from __future__ import annotations

import struct

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from mimic_server.codec.implicit_stream import MAX_NESTING
from mimic_server.codec.nesting import nests_deeper_than
from mimic_server.dimse.raw_send import refuse_if_too_deep
from mimic_server.errors import CannotUnderstand
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
