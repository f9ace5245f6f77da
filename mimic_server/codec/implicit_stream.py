"""An Explicit VR Little Endian data set re-encoded in Implicit VR Little Endian as it streams.

Implicit VR Little Endian is the one transfer syntax every DICOM implementation must accept
(PS3.5 10.1), and a C-GET requestor or C-MOVE destination that proposes nothing else is
common. pynetdicom converts a data set to it by parsing the whole object and encoding it
again: for a stored object of a gigabyte that is gigabytes of memory. Both encodings are
little endian, so every value is the same bytes in both; only element headers differ (the
explicit one has a VR and, for some VRs, a 4-byte length after two reserved bytes; the
implicit one is always tag and 4-byte length). Values go as stored, their padding and all,
where pydicom would write them again from what it parsed. So the data set is read here element by
element and written again with implicit headers, values of any size passing through a
piece at a time.

Lengths: an explicit header of 12 bytes becomes one of 8, so a sequence or item of defined
length would shrink by an amount known only once its content is read. Every sequence and
item is written with undefined length and closed by its delimitation item instead (PS3.5
7.5); nothing is held to count. For the same reason group length elements (gggg,0000),
retired and counting explicit headers, are left out, as pydicom leaves them out.

What stays as it is: content already implicit (an undefined-length UN, whose content PS3.5
6.2.2 encodes implicit VR, or an item or data set that pydicom would read as implicit by its
first element, ``codec.structure.read_as_implicit``), copied byte for byte. What is refused
(``CannotUnderstand``, raised where it is met: the caller has sent what came before): an
undefined-length value other than a sequence (encapsulated data has no place in a native
syntax), an unknown VR, a value or item that overruns what contains it, a data set cut
short. The stored object passed the receive walk (``codec.structure``), so none is expected.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from mimic_server.errors import CannotUnderstand

_UNDEFINED = 0xFFFFFFFF
_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_END = b"\xfe\xff\x0d\xe0"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0"
_OPEN = b"\xff\xff\xff\xff"  # an undefined length
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
    out = bytearray()
    try:
        for part in _implicit_parts(_Reader(pieces)):
            view = memoryview(part).cast("B")
            while view.nbytes:
                taken = min(size - len(out), view.nbytes)
                out += view[:taken]
                view = view[taken:]
                if len(out) == size:
                    yield bytes(out)
                    out.clear()
        if out:
            yield bytes(out)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


class _Reader:
    """The data set's bytes, taken in exact amounts from pieces of any size."""

    def __init__(self, pieces: Iterator[bytes | memoryview]) -> None:
        self._pieces = pieces
        self._view = memoryview(b"")
        self.offset = 0  # bytes taken so far

    def _fill(self) -> bool:
        while not self._view.nbytes:
            piece = next(self._pieces, None)
            if piece is None:
                return False
            self._view = memoryview(piece).cast("B")
        return True

    def at_end(self) -> bool:
        return not self._fill()

    def peek(self, n: int) -> bytes:
        """Up to ``n`` next bytes, not taken (fewer only at the end)."""
        if self._view.nbytes >= n:
            return bytes(self._view[:n])
        if not self._fill():
            return b""
        joined = bytearray(self._view)  # a header split between pieces: join them
        while len(joined) < n:
            piece = next(self._pieces, None)
            if piece is None:
                break
            joined += memoryview(piece).cast("B")
        self._view = memoryview(bytes(joined))
        return bytes(self._view[:n])

    def take(self, n: int) -> bytes:
        head = self.peek(n)
        if len(head) < n:
            raise CannotUnderstand("the data set ends within an element")
        self._view = self._view[n:]
        self.offset += n
        return head

    def values(self, n: int) -> Iterator[memoryview]:
        """The next ``n`` bytes, as they come."""
        while n:
            if not self._fill():
                raise CannotUnderstand("a value overruns the data set")
            part = self._view[:n]
            self._view = self._view[part.nbytes:]
            self.offset += part.nbytes
            n -= part.nbytes
            yield part


def _implicit_parts(reader: _Reader) -> Iterator[bytes | memoryview]:
    """The data set re-encoded, as headers and value parts in order. The nesting is a
    stack of ``[kind, implicit, end]`` frames (``end``: where a defined-length sequence or
    item ends, or None), so deep nesting cannot exhaust Python's recursion limit."""
    stack: list[tuple[int, bool, int | None]] = [(_ELEMENTS, _looks_implicit(reader), None)]
    while stack:
        kind, implicit, end = stack[-1]
        if end is not None and reader.offset >= end:
            if reader.offset > end:
                raise CannotUnderstand("an element overruns its sequence item")
            stack.pop()
            yield _ITEM_END + b"\0\0\0\0" if kind == _ELEMENTS else _SEQUENCE_END + b"\0\0\0\0"
            continue
        if len(stack) == 1 and reader.at_end():
            return
        if kind == _ITEMS:
            head = reader.take(8)
            tag, length = head[:4], _LENGTH.unpack_from(head, 4)[0]
            if tag == _SEQUENCE_END and end is None:
                stack.pop()
                yield head
            elif tag != _ITEM:
                raise CannotUnderstand("an element where a sequence item belongs")
            elif implicit:  # copied: the item as it is, its content walked when undefined
                yield head
                if length == _UNDEFINED:
                    stack.append((_ELEMENTS, True, None))
                else:
                    yield from reader.values(length)
            elif length == _UNDEFINED:
                yield head
                stack.append((_ELEMENTS, _looks_implicit(reader), None))
            elif _looks_implicit(reader):  # pydicom reads it implicit: it already is
                yield head
                yield from reader.values(length)
            else:
                yield _ITEM + _OPEN
                stack.append((_ELEMENTS, False, reader.offset + length))
            continue
        if reader.peek(4) == _ITEM_END:
            if end is not None or len(stack) == 1:
                raise CannotUnderstand("an Item Delimitation Item outside an item")
            reader.take(8)
            stack.pop()
            yield _ITEM_END + b"\0\0\0\0"
            continue
        if implicit:
            head = reader.take(8)
            yield head
            length = _LENGTH.unpack_from(head, 4)[0]
            if length == _UNDEFINED:
                stack.append((_ITEMS, True, None))
            else:
                yield from reader.values(length)
            continue
        head = reader.take(8)
        tag, vr = head[:4], head[4:6]
        if vr in _VR_SHORT:
            length = _SHORT_LENGTH.unpack_from(head, 6)[0]
        elif vr in _VR_LONG:
            length = _LENGTH.unpack(reader.take(4))[0]
        else:
            raise CannotUnderstand("an element has an unknown VR")
        if tag[2:] == b"\0\0":  # a group length: it counted explicit headers (PS3.5 7.2)
            for _ in reader.values(length):
                pass
        elif vr == b"SQ":
            yield tag + _OPEN
            stack.append((_ITEMS, False,
                          None if length == _UNDEFINED else reader.offset + length))
        elif length == _UNDEFINED:
            if vr != b"UN":
                raise CannotUnderstand("a value of undefined length in a native syntax")
            yield tag + _OPEN  # PS3.5 6.2.2: its content is implicit VR already
            stack.append((_ITEMS, True, None))
        else:
            yield tag + _LENGTH.pack(length)
            yield from reader.values(length)
    if not reader.at_end():
        raise CannotUnderstand("bytes after the data set's end")


def _looks_implicit(reader: _Reader) -> bool:
    """Whether the elements that follow are read as implicit VR, as pydicom decides it:
    their first element's VR is not two upper-case letters."""
    head = reader.peek(6)
    if len(head) < 6 or head[:4] in (_ITEM_END, _SEQUENCE_END):
        return False
    return not (0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B)
