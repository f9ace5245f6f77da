"""How deep a stored data set's sequences nest, looked at before pydicom is given it whole.

pydicom reads and writes sequences by recursion, some frames of Python per level: a data set
of 5 KB whose sequences nest 250 levels deep takes its encoder past Python's recursion
limit, and what it does then (formatting each level's exception into the next) took the
process down in a test (a segmentation fault) and, in the server, held a C-GET for 31 s and
left a thread that had to be killed. The receive walk (``codec.structure``) does not look
inside sequences of defined length, so such an object can be stored. Every conversion
pynetdicom asks of the archive's senders is made without pydicom (``dimse/recoders``); should
one without such a counterpart be asked for, the senders hand the whole stored object to
pydicom (``dimse/raw_send``, ``dimse/stream_send``), and this looks first, and a data set
nested deeper than :data:`~mimic_server.codec.implicit_stream.MAX_NESTING` frames is refused
instead. It reads little endian, not deflated: one stored Deflated or in Big Endian is never
given to pydicom (``raw_send.refuse_if_too_deep``).

Ingest refuses a data set nested deeper than :data:`MAX_SEQUENCE_DEPTH` at the door, so only
an object stored before that bound (or of a shape it does not look at) meets this look at
send time: the bound is kept by the walks ingest makes anyway (``codec.structure`` for
undefined lengths, the index's JSON in ``codec.dicom_json`` for defined ones), and by this
look only where that JSON leaves a sequence to pydicom.

It reads as pydicom reads, and counts conservatively where the encoding leaves it open: a
sequence is an SQ, or (in implicit VR or as UN) an element the dictionary names a sequence or
whose value starts with an Item tag; any header among a sequence's items is an item;
each data set and item, the top level included, is read as implicit or explicit VR by its
first element. A data set that runs out ends the look.
"""

from __future__ import annotations

import struct
from typing import NoReturn

from pydicom.datadict import dictionary_VR
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from mimic_server.errors import CannotUnderstand

_UNDEFINED = 0xFFFFFFFF
_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_END = b"\xfe\xff\x0d\xe0"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0"
_VR_LONG = frozenset(str(vr).encode() for vr in VR if vr in EXPLICIT_VR_LENGTH_32)
_LENGTH = struct.Struct("<L")
_SHORT_LENGTH = struct.Struct("<H")
_ELEMENTS, _ITEMS = 0, 1

#: How many sequences deep a received data set may nest (a sequence, in an item of a
#: sequence, ...): deeper is refused at the door (0xC000). Real objects nest a few levels,
#: a structured report's content tree or an RT structure set some 10 to 20. Every path
#: that serves an object can take this depth: the senders' conversions bound their walk
#: at ``implicit_stream.MAX_NESTING`` frames (128 sequences), and pydicom, which WADO-RS
#: metadata and a conversion without a counterpart of ours use, recurses some 5 frames a
#: level and failed past 150 to 200 under Python's default recursion limit.
MAX_SEQUENCE_DEPTH = 64
#: The same bound in frames of the walks (the data set, then each sequence and each of its
#: items count one): how ``nests_deeper_than`` and ``codec.structure`` count.
MAX_FRAMES = 1 + 2 * MAX_SEQUENCE_DEPTH


class NestedTooDeep(CannotUnderstand):
    """A received data set nested past :data:`MAX_SEQUENCE_DEPTH` (0xC000): its own
    reason, whichever walk met it."""


def too_deep() -> NoReturn:
    raise NestedTooDeep(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH}")


def nests_deeper_than(data: bytes | memoryview, limit: int,
                      items_of: bool | None = None) -> bool:
    """Whether the little endian data set ``data`` (from its first element on) nests its
    sequences and items deeper than ``limit`` frames (a sequence and each of its items
    count one each). Iterative: any depth is looked at in constant Python stack.

    ``items_of``: ``data`` is instead the value of a top-level sequence (its items), in
    implicit VR (True) or explicit; counted as in the data set holding it."""
    view = memoryview(data).cast("B")
    size = view.nbytes
    # Frames: (kind, implicit, end); end None for an undefined length (ended by its delimiter).
    # The top level, like each item, is read as its first element says, whatever the
    # transfer syntax declares (pydicom's reader does the same).
    stack: list[tuple[int, bool, int | None]]
    if items_of is None:
        stack = [(_ELEMENTS, _looks_implicit(view, 0, False), size)]
    else:
        stack = [(_ELEMENTS, items_of, size), (_ITEMS, items_of, size)]
    pos = 0
    while stack:
        kind, frame_implicit, end = stack[-1]
        if pos >= (size if end is None else end):
            stack.pop()
            continue
        if pos + 8 > size:
            return False
        tag = bytes(view[pos:pos + 4])
        if kind == _ITEMS:
            length = _LENGTH.unpack_from(view, pos + 4)[0]
            pos += 8
            if tag == _SEQUENCE_END:
                stack.pop()
                continue
            # Any other header here is read by pydicom as an item, whatever its tag.
            inner = frame_implicit or _looks_implicit(view, pos, False)
            stack.append((_ELEMENTS, inner, None if length == _UNDEFINED else pos + length))
        elif tag == _ITEM_END:
            pos += 8
            stack.pop()
            continue
        else:
            vr = None if frame_implicit else bytes(view[pos + 4:pos + 6])
            if vr is None or not (b"AA" <= vr <= b"ZZ"):  # implicit, or switched to it
                vr = None
                length, pos = _LENGTH.unpack_from(view, pos + 4)[0], pos + 8
            elif vr in _VR_LONG:
                if pos + 12 > size:
                    return False
                length, pos = _LENGTH.unpack_from(view, pos + 8)[0], pos + 12
            else:
                length, pos = _SHORT_LENGTH.unpack_from(view, pos + 6)[0], pos + 8
            if length == _UNDEFINED:
                stack.append((_ITEMS, frame_implicit, None))
            elif vr == b"SQ" or (vr in (None, b"UN") and (
                    _is_sequence(tag) or bytes(view[pos:pos + 4]) == _ITEM)):
                # A sequence: explicitly, by the dictionary (as pydicom reads an implicit or
                # UN one), or by its first item (as it reads a private one).
                stack.append((_ITEMS, frame_implicit, pos + length))
            else:
                pos += length
        if len(stack) > limit:
            return True
    return False


def _is_sequence(tag: bytes) -> bool:
    """Whether the data dictionary names the element ``tag`` (its 4 bytes, little endian) a
    sequence."""
    group, element = struct.unpack("<HH", tag)
    try:
        return bool(dictionary_VR((group << 16) | element) == "SQ")
    except KeyError:
        return False


def _looks_implicit(view: memoryview, pos: int, implicit: bool) -> bool:
    """Whether the elements from ``pos`` on are read as implicit VR, as pydicom decides it:
    by whether the first element's VR is two upper-case letters."""
    if implicit:
        return True
    if pos + 6 > view.nbytes or bytes(view[pos:pos + 4]) in (_ITEM_END, _SEQUENCE_END):
        return False
    return not (0x40 < view[pos + 4] < 0x5B and 0x40 < view[pos + 5] < 0x5B)
