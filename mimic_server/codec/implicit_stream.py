"""An Explicit VR Little Endian data set re-encoded in Implicit VR Little Endian as it streams.

Implicit VR Little Endian is the one transfer syntax every DICOM implementation must accept
(PS3.5 10.1), and a C-GET requestor or C-MOVE destination that proposes nothing else is
common. pynetdicom converts a data set to it by parsing the whole object and encoding it
again: for a stored object of a gigabyte that is gigabytes of memory. Both encodings are
little endian, so every value is the same bytes in both; only element headers differ (the
explicit one has a VR and, for some VRs, a 4-byte length after two reserved bytes; the
implicit one is always tag and 4-byte length). So the data set is read here element by
element and written again with implicit headers, values of any size passing through a piece
at a time. Values go as stored (an odd length, trailing spaces and all), where pydicom
writes them again from what it parsed: pydicom reads the same values from either.

Lengths: an explicit header of 12 bytes becomes one of 8, so a sequence or item of defined
length would shrink by an amount known only once its content is read. Every sequence and
item is written with undefined length and closed by its delimitation item instead (PS3.5
7.5); nothing is held to count. For the same reason group length elements (gggg,0000),
retired and counting explicit headers, are left out (pydicom leaves out those of groups
above 0006 too; 0000-0006 never stand in a stored object's data set but group 0004 of a
DICOMDIR, whose length pydicom keeps wrong).

Where the receive walk (``codec.structure``) did not look, inside sequences and items of
defined length, this reads as pydicom reads, which is what the destination got before:
each item is read as implicit VR when its first element says so (as
``codec.structure.read_as_implicit`` decides for a data set), a Sequence or Item
Delimitation Item ends its sequence or item whatever its defined length, and an element
whose VR is not two capital letters is read as implicit VR. Content that is implicit VR
already (an item so read, or an element so switched, its value included) and the items of
an undefined-length value that is neither a sequence nor a UN (encapsulated Pixel Data, out
of place in a native syntax) are copied as they are. What is refused (``CannotUnderstand``,
raised where it is met: the caller has sent what came before, and aborts): an unknown VR,
an element or item that overruns what contains it, a data set cut short, an Item
Delimitation Item outside any item, and nesting deeper than :data:`MAX_NESTING` frames.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

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

#: Frames of the walk (sequences and items, counted apart) beyond which a data set is refused.
#: Real objects nest some tens (a structured report's content tree); pydicom, which writes
#: sequences by recursion, fails at about 250 levels (500 frames), taking the process down.
MAX_NESTING = 256
_VR_LONG = frozenset(str(vr).encode() for vr in VR if vr in EXPLICIT_VR_LENGTH_32)
_VR_SHORT = frozenset(str(vr).encode() for vr in VR if vr not in EXPLICIT_VR_LENGTH_32)
_LENGTH = struct.Struct("<L")
_SHORT_LENGTH = struct.Struct("<H")

# What a frame of the walk holds: the elements of a data set or item, or the items of a
# sequence; explicit ones are re-encoded, implicit ones copied.
_ELEMENTS, _ITEMS = 0, 1


def implicit_pieces(pieces: Iterator[bytes | memoryview], size: int) -> Iterator[bytes]:
    """The Explicit VR Little Endian data set given in ``pieces``, in Implicit VR Little
    Endian, in pieces of ``size`` bytes (the last one shorter). Closing this iterator
    closes ``pieces`` (a store's handle)."""
    return sized(_implicit_parts(PieceReader(pieces)), size, pieces)


def _implicit_parts(reader: PieceReader) -> Iterator[bytes | memoryview]:
    """The data set re-encoded, as headers and value parts in order. The nesting is a
    stack of ``(kind, implicit, end)`` frames (``end``: where a defined-length sequence or
    item ends, or None), so deep nesting cannot exhaust Python's recursion limit; it is
    bounded (:data:`MAX_NESTING`), so a crafted data set cannot grow it without end."""
    stack: list[tuple[int, bool, int | None]] = [(_ELEMENTS, _looks_implicit(reader), None)]
    while True:
        kind, implicit, end = stack[-1]
        if end is not None and reader.offset >= end:
            if reader.offset > end:
                raise CannotUnderstand("an element overruns its sequence or item")
            stack.pop()
            yield ITEM_END + ZERO if kind == _ELEMENTS else SEQUENCE_END + ZERO
            continue
        if len(stack) == 1 and reader.at_end():
            return
        if len(stack) > MAX_NESTING:
            raise CannotUnderstand("sequences nested too deep")
        if kind == _ITEMS:
            head = reader.take(8)
            if end is not None and reader.offset > end:
                raise CannotUnderstand("an item overruns its sequence")
            tag, length = head[:4], _LENGTH.unpack_from(head, 4)[0]
            if tag == SEQUENCE_END:
                # Ends the sequence, also one of defined length, whose remaining bytes
                # pydicom then skips, as here.
                stack.pop()
                if end is not None:
                    for _ in reader.values(end - reader.offset):
                        pass
                yield head if implicit else SEQUENCE_END + ZERO
            elif tag != ITEM:
                raise CannotUnderstand("an element where a sequence item belongs")
            elif implicit:  # copied: the item as it is, its content walked when undefined
                yield head
                if length == UNDEFINED:
                    stack.append((_ELEMENTS, True, None))
                else:
                    yield from reader.values(length)
            elif length == UNDEFINED:
                yield head
                stack.append((_ELEMENTS, _looks_implicit(reader), None))
            elif _looks_implicit(reader):  # pydicom reads it implicit: it already is
                yield head
                yield from reader.values(length)
            else:
                yield ITEM + OPEN
                stack.append((_ELEMENTS, False, reader.offset + length))
            continue
        if reader.peek(4) == ITEM_END:
            # Ends the item, also one of defined length (pydicom reads on from here).
            if len(stack) == 1:
                raise CannotUnderstand("an Item Delimitation Item outside an item")
            reader.take(8)
            stack.pop()
            yield ITEM_END + ZERO
            continue
        head = reader.take(8)
        vr = head[4:6]
        if implicit or not (b"AA" <= vr <= b"ZZ"):
            # Implicit VR, or an element that switches to it where an explicit VR belongs
            # (pydicom reads it so: some writers do it in sequences): copied as it is.
            yield head
            length = _LENGTH.unpack_from(head, 4)[0]
            if length == UNDEFINED:
                stack.append((_ITEMS, implicit, None))
            else:
                yield from reader.values(length)
            continue
        tag = head[:4]
        if vr in _VR_SHORT:
            length = _SHORT_LENGTH.unpack_from(head, 6)[0]
        elif vr in _VR_LONG:
            length = _LENGTH.unpack(reader.take(4))[0]
        else:
            raise CannotUnderstand("an element has an unknown VR")
        if tag[2:] == b"\0\0":  # a group length: it counted explicit headers (PS3.5 7.2)
            for _ in reader.values(length):
                pass
        elif length == UNDEFINED:
            yield tag + OPEN
            # A sequence, or a UN that is one (PS3.5 6.2.2): each item told by its first
            # element, as pydicom tells it. Anything else (encapsulated Pixel Data, out of
            # place in a native syntax): its items copied as they are, as pydicom writes them.
            stack.append((_ITEMS, vr not in (b"SQ", b"UN"), None))
        elif vr == b"SQ":
            yield tag + OPEN
            stack.append((_ITEMS, False, reader.offset + length))
        else:
            yield tag + _LENGTH.pack(length)
            yield from reader.values(length)


def _looks_implicit(reader: PieceReader) -> bool:
    """Whether the elements that follow are read as implicit VR, as pydicom decides it:
    their first element's VR is not two upper-case letters."""
    head = reader.peek(6)
    if len(head) < 6 or head[:4] in (ITEM_END, SEQUENCE_END):
        return False
    return not (0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B)
