"""An Implicit VR Little Endian data set re-encoded in Explicit VR Little Endian as it streams.

A C-GET requestor or C-MOVE destination that accepts only Explicit VR Little Endian for an
object stored in Implicit VR got it from pynetdicom parsed and encoded again, whole: for a
stored object of a gigabyte, gigabytes of memory. Both encodings are little endian, so every
value is the same bytes; what the explicit header adds is the VR, which an implicit data set
does not carry. It is taken here as pydicom takes it when it reads an implicit data set and
writes it explicit:

- the data dictionary's VR (repeating groups included); a private element's from the private
  dictionary under its block's Private Creator (read in the same data set or item), a Private
  Creator's LO, any other UN; a sequence of undefined length that the dictionary does not
  know is an SQ when its value starts with an Item;
- an ambiguous VR resolved as pydicom's writer resolves it with the whole object in hand:
  OW for OB or OW (Pixel Data, Overlay Data, waveform data, a private dictionary's OB_OW:
  always OW in Implicit VR, PS3.5 A.1; encapsulated Pixel Data of undefined length OB); US or
  SS by the Pixel Representation of the nearest data set that has one, this one first, then
  each enclosing one, read already or looked for ahead (up to :data:`LOOK_AHEAD` bytes);
  none: US. LUT Data by its LUT Descriptor's first value (1: US, else OW). Two departures,
  both where pydicom writes what DICOM does not mean: the items of an undefined-length
  sequence take the enclosing Pixel Representation too (pydicom hands it only to those of a
  defined-length one, and writes US), and the retired US or SS elements pydicom does not
  resolve, nor can write, are resolved the same way (US or SS or OW: OW);
- a value too long for a VR with a 2-byte length goes as UN (PS3.5 6.2.2), as pydicom's
  writer does.

Values go as stored. Sequences and items are written with undefined length, ended by their
delimitation items, because an explicit header can be longer than the implicit one (12
against 8 bytes) and a defined length would need the content counted first; group lengths,
which counted implicit headers, are left out. A data set stored under Implicit VR whose first
element has an explicit VR is explicit already (pydicom reads it so): it is copied as it is.
An undefined-length value that is not a sequence (encapsulated Pixel Data, out of place in a
native syntax) has its items copied. What is refused (``CannotUnderstand``, raised where it is
met: the caller has sent what came before, and aborts): an element or item that overruns
what contains it, a data set cut short, a header where an item belongs, an Item Delimitation
Item outside any item, a value of undefined length whose VR has a 2-byte length (pydicom
writes a header that misreads all after it), and nesting deeper than
:data:`~mimic_server.codec.implicit_stream.MAX_NESTING` frames.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from mimic_server.codec.implicit_stream import MAX_NESTING
from mimic_server.codec.piece_reader import (
    ITEM,
    ITEM_END,
    OPEN,
    SEQUENCE_END,
    UNDEFINED,
    ZERO,
    PieceReader,
    sized,
)
from mimic_server.errors import CannotUnderstand

_TAG = struct.Struct("<HH")
_LENGTH = struct.Struct("<L")
_SHORT = struct.Struct("<H")
_KNOWN_VRS = frozenset(str(vr) for vr in VR)
_LONG_VRS = frozenset(str(vr) for vr in VR if vr in EXPLICIT_VR_LENGTH_32)

_PIXEL_REPRESENTATION, _PIXEL_DATA = 0x00280103, 0x7FE00010
_LUT_DESCRIPTOR, _LUT_DATA = 0x00283002, 0x00283006
#: How far ahead, in bytes, the Pixel Representation of the data set an element that needs
#: it stands in is looked for, where it comes later ((0018,9810), (0022,1452) sort before it;
#: an item's elements come before the enclosing data set's).
LOOK_AHEAD = 1 << 20
#: A data set looked at to its end, or past the tag, without a Pixel Representation.
_NONE = -1

# What a frame of the walk holds: the elements of a data set or item, or the items of a
# sequence; copied frames (an explicit data set, an encapsulated value) are not re-encoded.
_ELEMENTS, _ITEMS = 0, 1


@dataclass
class _Frame:
    kind: int
    copy: bool
    end: int | None  # where a defined-length sequence or item ends; None: its delimiter
    #: Of a data set or item: its Pixel Representation, LUT Descriptor's first value and
    #: Private Creators ((group, block) -> creator), as read so far.
    pixel_representation: int | None = None
    #: Its Pixel Representation further on, once looked for (:data:`_NONE`: none there, or
    #: not within reach): each data set is looked through once, not once per element.
    pixel_representation_ahead: int | None = None
    lut_entries: int | None = None
    creators: dict[tuple[int, int], str] = field(default_factory=dict)


def explicit_pieces(pieces: Iterator[bytes | memoryview], size: int) -> Iterator[bytes]:
    """The Implicit VR Little Endian data set given in ``pieces``, in Explicit VR Little
    Endian, in pieces of ``size`` bytes (the last one shorter). Closing this iterator
    closes ``pieces`` (a store's handle)."""
    return sized(_explicit_parts(PieceReader(pieces)), size, pieces)


def _explicit_parts(reader: PieceReader) -> Iterator[bytes | memoryview]:
    """The data set re-encoded, as headers and value parts in order; the nesting is a stack
    of frames (no recursion), bounded by ``MAX_NESTING``."""
    if _looks_explicit(reader):
        yield from reader.rest()  # explicit already: as it is
        return
    stack = [_Frame(_ELEMENTS, False, None)]
    while True:
        frame = stack[-1]
        if frame.end is not None and reader.offset >= frame.end:
            if reader.offset > frame.end:
                raise CannotUnderstand("an element overruns its sequence or item")
            stack.pop()
            if not frame.copy:
                yield ITEM_END + ZERO if frame.kind == _ELEMENTS else SEQUENCE_END + ZERO
            continue
        if len(stack) == 1 and reader.at_end():
            return
        if len(stack) > MAX_NESTING:
            raise CannotUnderstand("sequences nested too deep")
        head = reader.take(8)
        tag, length = head[:4], _LENGTH.unpack_from(head, 4)[0]
        if frame.kind == _ITEMS:
            if frame.end is not None and reader.offset > frame.end:
                raise CannotUnderstand("an item overruns its sequence")
            if tag == SEQUENCE_END:
                stack.pop()  # also of a defined-length sequence, whose rest pydicom skips
                if frame.end is not None:
                    for _ in reader.values(frame.end - reader.offset):
                        pass
                yield head if frame.copy else SEQUENCE_END + ZERO
            elif tag != ITEM:
                raise CannotUnderstand("an element where a sequence item belongs")
            elif frame.copy:  # an encapsulated value's item, as it is
                if length == UNDEFINED:
                    raise CannotUnderstand("an item of undefined length in an encapsulated value")
                yield head
                yield from reader.values(length)
            else:
                yield ITEM + OPEN
                stack.append(_Frame(_ELEMENTS, False,
                                    None if length == UNDEFINED else reader.offset + length))
            continue
        if tag == ITEM_END:  # ends the item, also one of defined length (pydicom reads on)
            if len(stack) == 1:
                raise CannotUnderstand("an Item Delimitation Item outside an item")
            stack.pop()
            yield ITEM_END + ZERO
            continue
        group, element = _TAG.unpack(tag)
        number = group << 16 | element
        if group == 0xFFFE:
            raise CannotUnderstand("an item or delimitation item where an element belongs")
        if element == 0:  # a group length: it counted implicit headers (PS3.5 7.2)
            for _ in reader.values(length):
                pass
            continue
        if length == UNDEFINED:
            vr = _undefined_length_vr(number, group, element, frame, reader)
            yield tag + vr.encode() + b"\0\0" + OPEN
            # A sequence's items are re-encoded; any other value's (encapsulated) copied.
            stack.append(_Frame(_ITEMS, vr != "SQ", None))
            continue
        vr = _vr(number, group, element, length, stack, reader)
        if vr == "SQ":
            yield tag + b"SQ\0\0" + OPEN
            stack.append(_Frame(_ITEMS, False, reader.offset + length))
            continue
        if vr in _LONG_VRS:
            yield tag + vr.encode() + b"\0\0" + _LENGTH.pack(length)
        else:
            yield tag + vr.encode() + _SHORT.pack(length)
        if number == _PIXEL_REPRESENTATION and 2 <= length <= 64:
            value = reader.take(length)
            frame.pixel_representation = _SHORT.unpack_from(value)[0]
            yield value
        elif number == _LUT_DESCRIPTOR and 2 <= length <= 64:
            value = reader.take(length)
            frame.lut_entries = _SHORT.unpack_from(value)[0]
            yield value
        elif group & 1 and 0x10 <= element <= 0xFF and length <= 1024:  # a Private Creator
            value = reader.take(length)
            frame.creators[(group, element)] = value.decode("latin-1").rstrip(" \0")
            yield value
        else:
            yield from reader.values(length)


@functools.lru_cache(maxsize=4096)
def _dictionary_vr(number: int) -> str | None:
    """The data dictionary's VR of the element ``number`` (None: not in it); looked up once
    per tag (pydicom's look-up was most of the re-encoding's time)."""
    try:
        return str(dictionary_VR(number))
    except KeyError:
        return None


@functools.lru_cache(maxsize=1024)
def _private_dictionary_vr(number: int, creator: str) -> str | None:
    try:
        return str(private_dictionary_VR(number, creator))
    except KeyError:
        return None


def _undefined_length_vr(number: int, group: int, element: int, frame: _Frame,
                         reader: PieceReader) -> str:
    """The VR of an element of undefined length, as pydicom's reader takes it: the
    dictionary's (a sequence, or a value read to its delimiter: encapsulated Pixel Data is
    OB, other OB or OW values OW), or for one the dictionary does not know, SQ when its
    value starts with an Item, else a private element's VR (or UN). A VR whose length has 2
    bytes cannot be of undefined length in Explicit VR: refused (pydicom writes a header
    that misreads everything after it)."""
    vr = _dictionary_vr(number)
    if vr is None:
        if reader.peek(4) == ITEM:
            return "SQ"
        vr = _private_vr(group, element, frame) if group & 1 else "UN"
    if " or " in vr:
        vr = "OB" if number == _PIXEL_DATA else "OW" if "OW" in vr else vr
    vr = _known(vr)
    if vr not in _LONG_VRS:
        raise CannotUnderstand("a value of undefined length whose VR cannot have one")
    return vr


def _vr(number: int, group: int, element: int, length: int, stack: list[_Frame],
        reader: PieceReader) -> str:
    """The explicit VR of the defined-length element ``number`` in the data set or item at
    the top of ``stack``."""
    vr = _dictionary_vr(number)
    if vr is None:
        vr = _private_vr(group, element, stack[-1]) if group & 1 else "UN"
    if " or " in vr:
        vr = _resolved(vr, number, length, stack, reader)
    vr = _known(vr)
    if vr not in _LONG_VRS and length > 0xFFFF:
        return "UN"  # too long for a 2-byte length (pydicom's writer does the same)
    return vr


def _private_vr(group: int, element: int, frame: _Frame) -> str:
    if 0x10 <= element <= 0xFF:
        return "LO"  # a Private Creator
    creator = frame.creators.get((group, element >> 8)) if element & 0xFF00 else None
    if creator and "\\" not in creator:
        vr = _private_dictionary_vr(group << 16 | element, creator)
        # The private dictionary writes an ambiguous VR with an underscore (OB_OW).
        return vr.replace("_", " or ") if vr else "UN"
    return "UN"


def _resolved(vr: str, number: int, length: int, stack: list[_Frame],
              reader: PieceReader) -> str:
    """An ambiguous VR resolved as pydicom's writer resolves it for a data set read in
    Implicit VR (the module's docstring)."""
    if vr.startswith("US or SS") and vr != "US or SS or OW":
        return "US" if _pixel_representation(stack, length, reader) == 0 else "SS"
    if vr == "US or OW" and number == _LUT_DATA:
        return "US" if stack[-1].lut_entries == 1 else "OW"
    return "OW"  # OB or OW, and what pydicom cannot write: implicit VR's OW (PS3.5 A.1)


def _pixel_representation(stack: list[_Frame], length: int, reader: PieceReader) -> int:
    """The Pixel Representation for an element (of ``length`` bytes, its value next in
    ``reader``) of the data set or item at the top of ``stack``, as pydicom's writer finds
    it with the whole object in hand: the nearest data set that has one, this one first,
    then each enclosing one, wherever in it the element stands; read so far, or looked for
    ahead (:func:`_pixel_representations_ahead`); none: 0."""
    levels = [f for f in reversed(stack) if f.kind == _ELEMENTS]  # the nearest first
    known = [f.pixel_representation for f in levels]
    found = {level: f.pixel_representation_ahead for level, f in enumerate(levels)
             if f.pixel_representation_ahead is not None}
    if not _settled(known, found):
        found, settled = _pixel_representations_ahead(stack, known, found, length, reader)
        for level, frame in enumerate(levels):
            if level in found:
                frame.pixel_representation_ahead = found[level]
            elif not settled:  # the data set or the look's reach ended first
                frame.pixel_representation_ahead = _NONE
    for level, value in enumerate(known):
        if value is not None:
            return value
        if found.get(level, _NONE) != _NONE:
            return found[level]
    return 0


def _pixel_representations_ahead(stack: list[_Frame], known: list[int | None],
                                 looked: dict[int, int], length: int,
                                 reader: PieceReader) -> tuple[dict[int, int], bool]:
    """The Pixel Representations further on of the data sets and items on ``stack`` (by
    level, 0 the nearest; ``known``: theirs read so far; ``looked``: theirs further on found
    by an earlier look; :data:`_NONE`: none further on), from after the current value of
    ``length`` bytes and within :data:`LOOK_AHEAD` bytes; and whether that settled it. The
    window is read with growing peeks (never more than twice what the look needed), and
    walked as the stream is (sequences and items by their lengths or delimiters, skipped
    whole where they are defined); a data set stops being looked at past the Pixel
    Representation's tag (elements are in tag order), and the look stops once the nearest
    level that may have one is settled. Each data set's answer is kept on its frame, so
    that it is looked through once, not once per element that needs it."""
    window_size = 4096
    while True:
        window = reader.peek(length + window_size)
        found, complete = _scan(stack, known, dict(looked), length, reader.offset, window)
        if complete or len(window) < length + window_size or window_size >= LOOK_AHEAD:
            return found, complete
        window_size *= 2


def _scan(stack: list[_Frame], known: list[int | None], found: dict[int, int], start: int,
          offset: int, window: bytes) -> tuple[dict[int, int], bool]:
    """:func:`_pixel_representations_ahead` over one ``window`` (the stream from ``offset``
    on), adding to ``found``; also whether the look was settled within it."""
    # (kind, end within the window or None, level of a data set on ``stack`` or None);
    # frames entered in the window are walked for their delimiters only.
    levels = len([f for f in stack if f.kind == _ELEMENTS])
    frames: list[tuple[int, int | None, int | None]] = []
    for frame in stack:
        level = None
        if frame.kind == _ELEMENTS:
            levels -= 1
            level = levels
        frames.append((frame.kind, None if frame.end is None else frame.end - offset, level))
    pos = start
    while frames:
        kind, end, level = frames[-1]
        if end is not None and pos >= end:
            if _left(frames, level, known, found):
                return found, True
            continue
        if pos + 8 > len(window):
            return found, False
        tag, size = window[pos:pos + 4], _LENGTH.unpack_from(window, pos + 4)[0]
        pos += 8
        if kind == _ITEMS:
            if tag == SEQUENCE_END:
                frames.pop()
                pos = end if end is not None else pos
            elif size == UNDEFINED:
                frames.append((_ELEMENTS, None, None))
            else:
                pos += size  # an item of defined length, whole
        elif tag == ITEM_END:
            if _left(frames, level, known, found):
                return found, True
        elif size == UNDEFINED:
            frames.append((_ITEMS, None, None))
        else:
            if level is not None and level not in found:
                number = int.from_bytes(tag[:2], "little") << 16 | int.from_bytes(
                    tag[2:], "little")
                if number == _PIXEL_REPRESENTATION and 2 <= size <= 64:
                    if pos + 2 > len(window):
                        return found, False
                    found[level] = _SHORT.unpack_from(window, pos)[0]
                    if _settled(known, found):
                        return found, True
                elif number > _PIXEL_REPRESENTATION:
                    found.setdefault(level, _NONE)  # none further on in this data set
                    if _settled(known, found):
                        return found, True
            pos += size
    return found, True


def _left(frames: list[tuple[int, int | None, int | None]], level: int | None,
          known: list[int | None], found: dict[int, int]) -> bool:
    """Leave the data set at the top of ``frames``; whether that settles the look."""
    frames.pop()
    if level is None:
        return False
    found.setdefault(level, _NONE)
    return _settled(known, found)


def _settled(known: list[int | None], found: dict[int, int]) -> bool:
    """Whether the nearest level with a Pixel Representation is known: each nearer one
    was looked at to its end, or past the tag, and had none."""
    for level, value in enumerate(known):
        if value is not None:
            return True
        if level not in found:
            return False
        if found[level] != _NONE:
            return True
    return True
def _known(vr: str) -> str:
    return vr if vr in _KNOWN_VRS else "UN"


def _looks_explicit(reader: PieceReader) -> bool:
    """Whether the data set's first element has an explicit VR (two upper-case letters), so
    that pydicom reads it as Explicit VR whatever the stored syntax declares."""
    head = reader.peek(6)
    if len(head) < 6 or head[:4] in (ITEM_END, SEQUENCE_END):
        return False
    return 0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B
