"""A structural walk of a whole received data set: do its elements parse to its exact end?

The header parse stops before Pixel Data, and pydicom's reader forgives a lot (it stops
quietly at fewer than 8 trailing bytes, reads a value that overruns the end as a shorter one,
stops at a stray Item Delimitation Item). A data set whose top-level elements do not parse to
its exact end is not an object the archive can ever serve, so it is refused before anything
is stored (``0xC000``).

The walk reads element headers only. A value of defined length is skipped without being
read or copied (a defined-length sequence or item too: its content was framed by its
sender and its length is checked against the end of what contains it), so the cost is
O(elements), not O(bytes): Pixel Data of any size is one header. Only values of undefined
length are walked, item by item (sequences of undefined length, items of undefined length
and the fragments of encapsulated Pixel Data) to their delimiters. The nesting is an explicit
stack, so a deeply nested data set cannot exhaust Python's recursion limit; past
``codec.nesting.MAX_FRAMES`` of it (sequences of undefined length nested deeper than
``MAX_SEQUENCE_DEPTH``, anywhere in the data set) it is refused, at one comparison a value
of undefined length. Nesting through sequences of defined length is bounded where the
header's DICOM JSON reads it (``codec/dicom_json.py``).

Encodings follow pydicom's reader, which the rest of the archive uses: explicit or implicit
VR, little or big endian as the transfer syntax says; Item and delimiter tags always have a
4-byte length and no VR; a data set or item of undefined length whose first element has
no upper-case letters where an explicit VR belongs is read as implicit VR (as pydicom does,
e.g. for the content of an undefined-length UN, which PS3.5 6.2.2 encodes implicit VR).
A data set whose first element shows an explicit VR on an Implicit VR transfer syntax is
refused: the archive stores it under that syntax, which dcmtk then reads as such, and fails.
Implicit VR bytes under an explicit VR syntax are read as implicit, as pydicom reads them:
a shipped file is so (``SC_rgb_jpeg.dcm``, JPEG Baseline, from highdicom 0.1.0) and is
taken. An explicit VR that is not a DICOM VR is refused: its length field's size is unknown.

The elements of the data set, and of each item of undefined length, must come in ascending
tag order, each tag once (PS3.5 7.1). The header read stops at Pixel Data, while pydicom (as
any receiver of a retrieve) reads the whole object into a dictionary where a repeated tag's
last value wins: a SOP Instance UID or Patient ID repeated after Pixel Data had the index
say one thing and the stored object another. One comparison per element, with the tag
before it in its data set or item; items of defined length are not walked, nor looked at.

A Deflated data set is inflated in chunks as it is walked (``feed``), so memory stays at
one chunk whatever the object's size, and inflating stops with a refusal past
``MAX_INFLATED`` bytes (a small upload cannot make the server inflate without end). The
deflate stream must end exactly at the end of the data set (one pad byte and a gzip
trailer allowed).
"""

from __future__ import annotations

import struct
import zlib

from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from mimic_server.codec.nesting import MAX_FRAMES, too_deep
from mimic_server.errors import CannotUnderstand

#: A bound on what a Deflated data set may inflate to: no real object comes near it.
MAX_INFLATED = 1 << 30
#: A bound on the element and item headers (delimiters included) one walk reads: a real
#: object has some thousands, and a whole slide image of a million fragments, or an
#: enhanced object of 100,000 frames whose per-frame items all have undefined length,
#: stays well below it. Each costs the walk some 0.25 µs of the GIL, and a Deflated data
#: set of 1.5 MB inflated to 131 million empty elements, walked in 30 s of CPU; at the
#: bound some 1 s. Refused 0xC000, as an object the archive will never take (0xA700 would
#: have its sender send it again and again).
MAX_ELEMENTS = 1 << 22
_INFLATE_CHUNK = 1 << 20

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
#: Command (0000) and File Meta (0002) elements belong to the DIMSE command and the Part 10
#: header, never to a data set (PS3.5 7.1, PS3.10 7.1); pydicom reads a data set that starts
#: with them as something else and stops early, so such an object could not be served.
_NOT_IN_A_DATA_SET = frozenset({0x0000, 0x0002})
_VR_LONG = frozenset(str(vr).encode() for vr in VR if vr in EXPLICIT_VR_LENGTH_32)
_VR_SHORT = frozenset(str(vr).encode() for vr in VR if vr not in EXPLICIT_VR_LENGTH_32)

#: Element headers, by endianness: tag and 4-byte length; explicit VR; a 32-bit length.
_STRUCTS = {
    little: tuple(struct.Struct(("<" if little else ">") + f) for f in ("HHL", "HH2sH", "L"))
    for little in (True, False)
}

# Frames of the walk: the elements of a data set (top level or an undefined-length item),
# or the items (or fragments) of an undefined-length value.
_ELEMENTS_EXPLICIT, _ELEMENTS_IMPLICIT, _ITEMS_EXPLICIT, _ITEMS_IMPLICIT = range(4)


def check_structure(dataset: memoryview, transfer_syntax: UID) -> None:
    """Raise ``CannotUnderstand`` unless the data set's elements parse to its exact end.

    A transfer syntax pydicom does not know is walked as explicit VR little endian, the
    encoding of every encapsulated syntax (as ``parse_header`` reads it).
    """
    known = transfer_syntax.is_transfer_syntax
    implicit = transfer_syntax.is_implicit_VR if known else False
    little = transfer_syntax.is_little_endian if known else True
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        _walk_deflated(dataset)
        return
    walk = StructureWalk(implicit, little)
    walk.feed(dataset)
    walk.close()


def check_structure_after(dataset: memoryview, implicit: bool, start: int, last_tag: int) -> None:
    """``check_structure`` of a little endian data set whose top-level elements before
    ``start`` were already read, by the rules of this walk (``codec/header_scan.py``: every
    one of a DICOM VR and a defined length within the data set, none of groups 0000, 0002
    or FFFE, in ascending tag order up to ``last_tag``): the walk goes on from ``start``,
    which is the end of one of them, with the encoding they had. Refusals name the same
    offsets as a whole walk's."""
    walk = StructureWalk(implicit, little=True)
    walk.resume_at(start, last_tag)
    walk.feed(dataset[start:])
    walk.close()


class StructureWalk:
    """The walk of one data set, fed in one piece or in chunks (``feed`` then ``close``)."""

    def __init__(self, implicit: bool, little: bool) -> None:
        self._tag_length, self._explicit, self._length = _STRUCTS[little]
        self._implicit = implicit
        self._stack: list[int] = []
        self._skip = 0  # bytes of a defined-length value still to come in later chunks
        self._tail = b""  # an element header split between two chunks
        self._offset = 0  # of the current chunk in the data set, for error messages
        #: The walk returns when its stack is this deep after a Sequence or an Item
        #: Delimitation Item (``undefined_length_end``, ``undefined_item_end``); a whole
        #: data set's never is (its stack keeps one).
        self._until = 0
        #: The last tag of the data set or item being walked (-1: none yet), and those of
        #: the data set and items of undefined length that enclose it, innermost last.
        self._last = -1
        self._enclosing_last: list[int] = []
        self._headers_left = MAX_ELEMENTS

    def resume_at(self, offset: int, last_tag: int) -> None:
        """Go on among the top-level elements at ``offset``, where the element ``last_tag``
        ended (in the transfer syntax's encoding: no look at the first element decides it);
        those before it came in ascending order."""
        assert not self._stack and not self._offset
        self._stack.append(_ELEMENTS_IMPLICIT if self._implicit else _ELEMENTS_EXPLICIT)
        self._offset = offset
        self._last = last_tag

    def feed(self, chunk: memoryview | bytes) -> None:
        """Walk the next bytes of the data set."""
        if self._skip:
            skipped = min(self._skip, len(chunk))
            self._skip -= skipped
            self._offset += skipped
            chunk = chunk[skipped:]
        if not chunk:
            return
        if self._tail:
            chunk = self._tail + bytes(chunk)  # self._offset is where the tail starts
        pos = self._run(chunk, final=False)
        self._tail = bytes(chunk[pos:])
        self._offset += len(chunk) - len(self._tail)

    def close(self) -> None:
        """The data set ended: raise ``CannotUnderstand`` unless it ended where it must."""
        if self._skip:
            _refuse("a value overruns the data set", self._offset)
        if self._tail or not self._stack:
            self._run(self._tail, final=True)
        if len(self._stack) > 1:
            _refuse("an undefined-length value is not closed", self._offset)

    def _run(self, data: memoryview | bytes, final: bool) -> int:
        """Walk ``data`` as far as whole element headers go; the position reached."""
        stack = self._stack
        if not stack:
            if len(data) < 6 and not final:
                return 0
            frame = _elements_frame(data, 0, self._implicit, in_item=False)
            if self._implicit and frame == _ELEMENTS_EXPLICIT:
                # PS3.5 A.1: Implicit VR. pydicom reads such bytes as explicit VR whatever
                # the File Meta says, dcmtk does not: stored under it, unreadable to dcmtk
                # and handed on so by C-GET / C-MOVE. The reverse (implicit VR bytes under
                # an explicit VR syntax, as highdicom 0.1.0 wrote SC_rgb_jpeg.dcm) is kept.
                raise CannotUnderstand("explicit VR data set on an Implicit VR transfer syntax")
            stack.append(frame)
        tag_length = self._tag_length.unpack_from
        explicit_header = self._explicit.unpack_from
        long_length = self._length.unpack_from
        size = len(data)
        pos = 0
        frame = stack[-1]
        last = self._last
        enclosing_last = self._enclosing_last
        headers_left = self._headers_left
        try:
            while True:
                left = size - pos
                if left < 8:
                    if left and final:
                        _refuse("a truncated element at the end", self._offset + pos)
                    return pos
                headers_left -= 1  # one more header of an element, item or delimiter
                if headers_left < 0:
                    raise CannotUnderstand(
                        f"the data set has more than {MAX_ELEMENTS} elements and items")
                if frame == _ELEMENTS_EXPLICIT:
                    group, element, vr, length = explicit_header(data, pos)
                    if group == 0xFFFE:
                        if element == 0xE00D and (vr != b"\0\0" or length):
                            # Its length is 0 (PS3.5 7.5.2); pydicom reads its 4 bytes as
                            # an explicit VR and length, and past them where they spell OB
                            # or UN.
                            _refuse(f"({group:04X},{element:04X}) of non-zero length",
                                    self._offset + pos)
                        frame = self._item_end(group, element, pos)
                        last = enclosing_last.pop()
                        pos += 8
                        if len(stack) == self._until:
                            return pos
                        continue
                    if group in _NOT_IN_A_DATA_SET and len(stack) == 1:
                        _refuse(f"({group:04X},{element:04X}) in the data set",
                                self._offset + pos)
                    if vr in _VR_SHORT:
                        pos += 8
                    elif vr in _VR_LONG:
                        if left < 12:
                            if final:
                                _refuse("a truncated element at the end", self._offset + pos)
                            return pos  # read again with the next chunk: not yet compared
                        length = long_length(data, pos + 8)[0]
                        pos += 12
                    else:
                        _refuse(f"({group:04X},{element:04X}) has an unknown VR",
                                self._offset + pos)
                    tag = group << 16 | element
                    if tag <= last:
                        _refuse(f"({group:04X},{element:04X}) out of tag order",
                                self._offset + pos - (12 if vr in _VR_LONG else 8))
                    last = tag
                elif frame == _ELEMENTS_IMPLICIT:
                    group, element, length = tag_length(data, pos)
                    if group == 0xFFFE:
                        frame = self._item_end(group, element, pos)
                        last = enclosing_last.pop()
                        pos += 8
                        if len(stack) == self._until:
                            return pos
                        continue
                    if group in _NOT_IN_A_DATA_SET and len(stack) == 1:
                        _refuse(f"({group:04X},{element:04X}) in the data set",
                                self._offset + pos)
                    tag = group << 16 | element
                    if tag <= last:
                        _refuse(f"({group:04X},{element:04X}) out of tag order",
                                self._offset + pos)
                    last = tag
                    pos += 8
                else:  # the items of an undefined-length value
                    group, element, length = tag_length(data, pos)
                    tag = group << 16 | element
                    if tag == _SEQUENCE_END:
                        stack.pop()
                        pos += 8
                        if len(stack) == self._until:
                            return pos
                        frame = stack[-1]
                        continue
                    if tag != _ITEM:
                        _refuse(f"({group:04X},{element:04X}) where an item belongs",
                                self._offset + pos)
                    if length == _UNDEFINED:
                        if left < 14 and not final:
                            return pos
                        frame = _elements_frame(data, pos + 8, frame == _ITEMS_IMPLICIT,
                                                in_item=True)
                        stack.append(frame)
                        if len(stack) > MAX_FRAMES:
                            too_deep()
                        enclosing_last.append(last)
                        last = -1
                        pos += 8
                        continue
                    pos += 8
                if length == _UNDEFINED:
                    frame = _ITEMS_IMPLICIT if frame == _ELEMENTS_IMPLICIT else _ITEMS_EXPLICIT
                    stack.append(frame)
                    if len(stack) > MAX_FRAMES:
                        too_deep()
                    continue
                pos += length
                if pos > size:
                    if final:
                        _refuse(f"({group:04X},{element:04X}) overruns the data set",
                                self._offset + size)
                    self._skip = pos - size
                    return size
        finally:
            self._last = last  # the next chunk goes on in the same data set or item
            self._headers_left = headers_left

    def _item_end(self, group: int, element: int, pos: int) -> int:
        """An Item Delimitation Item ends an undefined-length item; nothing else of group
        FFFE may stand among elements."""
        if element != 0xE00D or len(self._stack) < 2:
            _refuse(f"({group:04X},{element:04X}) among the elements", self._offset + pos)
        self._stack.pop()
        return self._stack[-1]


def undefined_length_end(
    data: memoryview, start: int, implicit: bool, little: bool = True
) -> int | None:
    """Where the value of undefined length whose items begin at ``start`` ends (past its
    Sequence Delimitation Item), walked by this module's rules among elements encoded as
    ``implicit`` says (``read_as_implicit``); ``None`` where it breaks them or does not end
    within ``data``. The header's readers take a sequence of undefined length as a whole
    from this, without reading its items (``codec/header_scan.py``, ``codec/header.py``)."""
    return _end_of(data, start, StructureWalk(implicit, little), [
        _ELEMENTS_IMPLICIT if implicit else _ELEMENTS_EXPLICIT,
        _ITEMS_IMPLICIT if implicit else _ITEMS_EXPLICIT])


def undefined_item_end(data: memoryview, start: int, implicit: bool) -> int | None:
    """Where the item of undefined length whose elements begin at ``start`` ends (past its
    Item Delimitation Item), walked by this module's rules (little endian; the item's
    encoding told by its first element, as pydicom tells it); ``None`` where it breaks them
    or does not end within ``data``. The header JSON reads such an item's elements itself
    (``codec/dicom_json.py``)."""
    return _end_of(data, start, StructureWalk(implicit, little=True), [
        _ELEMENTS_IMPLICIT if implicit else _ELEMENTS_EXPLICIT,
        _ITEMS_IMPLICIT if implicit else _ITEMS_EXPLICIT,
        _elements_frame(data, start, implicit, in_item=True)])


def _end_of(data: memoryview, start: int, walk: StructureWalk, stack: list[int]) -> int | None:
    """Where the value or item whose frames are ``stack`` (the innermost last) ends: the
    walk from ``start`` returns once the innermost is closed; ``None`` where it breaks the
    walk's rules or is not closed within ``data``."""
    walk._stack = stack
    walk._until = len(stack) - 1
    walk._enclosing_last = [-1] * len(stack)  # what closing an item at the bottom restores
    walk._offset = start
    try:
        ended = walk._run(data[start:], final=True)
    except CannotUnderstand:
        return None
    return start + ended if len(walk._stack) == walk._until else None


def read_as_implicit(data: memoryview | bytes, implicit: bool) -> bool:
    """Whether a data set's top-level elements are read as implicit VR: as its first
    element says, as pydicom decides (an odd object may disagree with its transfer syntax)."""
    return _elements_frame(data, 0, implicit, in_item=False) == _ELEMENTS_IMPLICIT


def _elements_frame(data: memoryview | bytes, pos: int, implicit: bool, in_item: bool) -> int:
    """How a data set starting at ``pos`` is encoded, decided as pydicom decides it."""
    if implicit and in_item:  # pydicom reads every item of an implicit VR data set implicit
        return _ELEMENTS_IMPLICIT
    if len(data) < pos + 6:
        return _ELEMENTS_IMPLICIT if implicit else _ELEMENTS_EXPLICIT
    looks_explicit = 0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B
    return _ELEMENTS_EXPLICIT if looks_explicit else _ELEMENTS_IMPLICIT


def _walk_deflated(dataset: memoryview) -> None:
    walk = DeflatedWalk()
    walk.feed(dataset)
    walk.close()


def structure_walk(transfer_syntax: UID) -> StructureWalk | DeflatedWalk:
    """A walk to feed a data set to chunk by chunk as it arrives, then ``close``."""
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        return DeflatedWalk()
    known = transfer_syntax.is_transfer_syntax
    return StructureWalk(
        transfer_syntax.is_implicit_VR if known else False,
        transfer_syntax.is_little_endian if known else True,
    )


class DeflatedWalk:
    """The walk of a Deflated data set fed in chunks: each is inflated ``_INFLATE_CHUNK`` at a
    time into the walk, so memory stays at one chunk, and inflating past ``MAX_INFLATED``
    is refused."""

    def __init__(self) -> None:
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._walk = StructureWalk(implicit=False, little=True)
        self._inflated = 0
        self._after = b""  # what follows the deflate stream

    def feed(self, chunk: memoryview | bytes) -> None:
        inflater = self._inflater
        if inflater.eof:  # the deflate stream ended in an earlier chunk
            self._trailing(bytes(chunk))
            return
        pending: memoryview | bytes = chunk
        try:
            # zlib may have consumed all input while output is still held back by the chunk
            # cap: drain until the stream ends or a call yields nothing from no input.
            while not inflater.eof:
                data = inflater.decompress(pending, _INFLATE_CHUNK)
                pending = inflater.unconsumed_tail
                if not data and not pending:
                    break
                self._inflated += len(data)
                if self._inflated > MAX_INFLATED:
                    raise CannotUnderstand("the deflated data set inflates beyond the bound")
                self._walk.feed(data)
        except zlib.error as exc:
            raise CannotUnderstand("the deflated data set cannot be inflated") from exc
        if inflater.eof:
            self._trailing(inflater.unused_data)

    def _trailing(self, data: bytes) -> None:
        """Bytes after the deflate stream: at most a pad byte or a gzip trailer (checked in
        ``close``); more is refused at once rather than collected."""
        self._after += data
        if len(self._after) > 16:
            raise CannotUnderstand("bytes follow the deflated data set")

    def close(self) -> None:
        if not self._inflater.eof:
            raise CannotUnderstand("the deflated data set is truncated")
        if not _pad_or_gzip_trailer(self._after, self._inflated):
            raise CannotUnderstand("bytes follow the deflated data set")
        self._walk.close()


def _pad_or_gzip_trailer(extra: bytes, inflated: int) -> bool:
    """What may follow the deflate stream: one pad byte to an even length, or a gzip
    trailer (CRC-32 and size, as some writers leave it; pydicom's ``image_dfl.dcm``)."""
    if len(extra) >= 8 and extra[4:8] == struct.pack("<L", inflated & 0xFFFFFFFF):
        extra = extra[8:]
    return extra in (b"", b"\x00")


def _refuse(why: str, offset: int) -> None:
    # The Error Comment holds 64 characters; offsets and tags are no patient data.
    raise CannotUnderstand(f"malformed: {why} at byte {offset}")
