"""A stored data set's elements for its WADO-RS metadata, read in one pass of its pieces,
with every top-level value the metadata gives as a BulkDataURI skipped, never held.

The metadata of an object held in memory is pydicom's parse of it with large values left
unread (``web/dicomweb/wado.header_of``). An object above 8 MiB, or a Deflated one (which can
inflate to 1 GiB), was first written whole to a spool file so that pydicom could read it in
place: a request for the metadata of a study of large images wrote each of them to disk
again. Here the data set streams past once (hashed again as it is read, inflated as it
streams where Deflated): what is kept is every element but those whose values the metadata
would not read, and pydicom parses that, a few kilobytes; the skipped ones are given to the
parse as values left unread, as pydicom leaves them (``RawDataElement`` with no value).

Skipped, at the top level only (nested values are the metadata's ``InlineBinary``):

- a value of defined length over :data:`SKIPPED_ABOVE` whose VR is one PS3.18 F.2.7 gives a
  BulkDataURI for (the VR as the metadata finds it: explicit, or the dictionary's);
- a value of undefined length pydicom does not read as a sequence (encapsulated Pixel Data)
  with such a VR, once its fragments pass :data:`SKIPPED_ABOVE` (a shorter one is kept:
  pydicom would read it).

The first element is always kept: pydicom tells an implicit data set from an explicit one
by it.

Anything this cannot vouch for (an element header it does not know, more than
:data:`MAX_KEPT` bytes to keep, a sequence of undefined length not ended within
:data:`SEQUENCE_AHEAD`) raises :class:`NotWalked`, and the caller takes the spool path
as before; the rules are the receive walk's (``codec/structure.py``), which every stored
data set passed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom.datadict import _dictionary_vr_fast
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from mimic_server.codec.header_scan import read_as_sequence
from mimic_server.codec.piece_reader import UNDEFINED, PieceReader
from mimic_server.codec.structure import read_as_implicit, undefined_length_end
from mimic_server.errors import CannotUnderstand

#: Top-level values longer than this whose VR the metadata gives a BulkDataURI for are
#: skipped (``wado.LARGEST_INLINE_VALUE``: the metadata reads none of them).
SKIPPED_ABOVE = 64 * 1024
#: Bytes of elements kept at most, counted before a value is read: a header past it takes
#: the spool path.
MAX_KEPT = 16 << 20
#: How far a top-level sequence of undefined length is looked ahead for its end, at most:
#: past it, the spool path. (The receive path takes those before Pixel Data within 1 MiB
#: together, ``codec/header_scan.HEADER_SEQUENCES``.)
SEQUENCE_AHEAD = 2 << 20
#: The VRs PS3.18 F.2.7 allows a BulkDataURI for (what ``web/dicomweb/wado`` gives one).
URI_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "DS", "FL", "FD", "IS", "LT",
                     "SL", "SS", "ST", "SV", "UC", "UL", "US", "UT", "UV"})

_LONG = frozenset(str(vr).encode() for vr in VR if vr in EXPLICIT_VR_LENGTH_32)
_SHORT = frozenset(str(vr).encode() for vr in VR if vr not in EXPLICIT_VR_LENGTH_32)
#: Never skipped, whatever their length: Specific Character Set (pydicom always reads it),
#: and the values pydicom reads to settle an ambiguous VR (Pixel Representation, Bits
#: Allocated, LUT Descriptor, Waveform Bits Allocated), which a skipped element could not
#: give it.
_NEVER_SKIPPED = frozenset({0x00080005, 0x00280103, 0x00280100, 0x00283002, 0x54001004})
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_END = (0xFFFE, 0xE0DD)


class NotWalked(Exception):
    """The data set is not one this walk vouches for: read it the spool way."""


@dataclass
class WalkedDataSet:
    """The top-level elements kept, as encoded, and those skipped, as pydicom leaves a
    value it did not read (no value; ``value_tell`` 0: nothing reads it)."""

    kept: bytearray = field(default_factory=bytearray)
    skipped: list[RawDataElement] = field(default_factory=list)
    #: The tags of the elements kept, in order: what pydicom must find in ``kept``.
    tags: list[int] = field(default_factory=list)


def without_bulk(pieces: Iterator[bytes | memoryview], implicit: bool,
                 little: bool = True) -> WalkedDataSet:
    """Walk the data set given in ``pieces`` (encoded as ``implicit`` and ``little`` say) to
    its end, every piece taken (so a verifying source checks its hash). Raises
    :class:`NotWalked` where it cannot vouch for the result; ``CannotUnderstand`` /
    ``OutOfResources`` of the source pass through."""
    source_failed: list[CannotUnderstand] = []
    reader = PieceReader(_noting_failure(pieces, source_failed))
    walked = WalkedDataSet()
    implicit = read_as_implicit(reader.peek(6), implicit)  # as pydicom reads it
    order = "<" if little else ">"
    header, explicit, long_length = (struct.Struct(order + f) for f in ("HHL", "HH2sH", "L"))
    first = True
    try:
        while not reader.at_end():
            head = reader.take(8)
            group, element, length = header.unpack(head)
            vr: str | None = None
            if not implicit:
                _g, _e, code, length = explicit.unpack(head)
                if code in _LONG:
                    more = reader.take(4)
                    head += more
                    (length,) = long_length.unpack(more)
                elif code not in _SHORT:
                    raise NotWalked("an explicit VR this walk does not know")
                vr = code.decode()
            tag = group << 16 | element
            if group == 0xFFFE:
                raise NotWalked("a delimiter at the top level")
            if length == UNDEFINED:
                _undefined(reader, walked, tag, vr, head, implicit, little,
                           skippable=not first and _skippable(tag, vr))
            elif not first and length > SKIPPED_ABOVE and _skippable(tag, vr):
                for _ in reader.values(length):
                    pass
                walked.skipped.append(RawDataElement(
                    BaseTag(tag), vr, length, None, 0, implicit, little))
            else:
                _keeping(walked, len(head) + length)
                walked.kept += head
                for part in reader.values(length):
                    walked.kept += part
                walked.tags.append(tag)
            first = False
    except CannotUnderstand as exc:
        if source_failed:  # the source's refusal (a deflate stream that does not inflate)
            raise
        raise NotWalked(str(exc)) from exc  # the walk's own: an element cut short
    return walked


def _noting_failure(pieces: Iterator[bytes | memoryview],
                    failed: list[CannotUnderstand]) -> Iterator[bytes | memoryview]:
    """``pieces``, a ``CannotUnderstand`` they raise noted in ``failed`` first."""
    try:
        yield from pieces
    except CannotUnderstand as exc:
        failed.append(exc)
        raise


def _keeping(walked: WalkedDataSet, more: int) -> None:
    """Refuse to keep ``more`` bytes past :data:`MAX_KEPT`, before any of them is read."""
    if len(walked.kept) + more > MAX_KEPT:
        raise NotWalked("more than MAX_KEPT bytes of elements to keep")


def _skippable(tag: int, vr: str | None) -> bool:
    """Whether the metadata gives this top-level value a BulkDataURI unread when long: its
    VR (explicit, or the dictionary's, every alternative of an ambiguous one) is one of
    :data:`URI_VRS`; never one of :data:`_NEVER_SKIPPED`."""
    if tag in _NEVER_SKIPPED:
        return False
    if vr is None:
        try:
            vr = _dictionary_vr_fast(tag)
        except KeyError:  # private or unknown: its VR may depend on its creator
            return False
    return all(each in URI_VRS for each in vr.split(" or "))


def _undefined(reader: PieceReader, walked: WalkedDataSet, tag: int, vr: str | None,
               head: bytes, implicit: bool, little: bool, skippable: bool) -> None:
    """A top-level value of undefined length: a sequence (as pydicom tells one) kept whole,
    found to its end by the receive walk's rules; anything else (encapsulated Pixel Data)
    walked fragment by fragment, kept while short or not ``skippable``, else skipped (let go
    before a fragment that would take it past :data:`SKIPPED_ABOVE` is read)."""
    if read_as_sequence(memoryview(reader.peek(4)), 0, tag, vr):
        limit = min(SEQUENCE_AHEAD, MAX_KEPT - len(walked.kept) - len(head))
        wanted = min(1 << 16, limit)
        while wanted > 0:
            ahead = reader.peek(wanted)
            end = undefined_length_end(memoryview(ahead), 0, implicit, little)
            if end is not None:
                walked.kept += head
                walked.kept += memoryview(ahead)[:end]
                for _ in reader.values(end):  # taken, not copied again
                    pass
                walked.tags.append(tag)
                return
            if len(ahead) < wanted or wanted >= limit:
                break
            wanted = min(wanted * 4, limit)
        raise NotWalked("a sequence of undefined length that does not end within reach")
    start = len(walked.kept)
    walked.kept += head
    keeping = True
    item = struct.Struct(("<" if little else ">") + "HHL")
    while True:
        item_head = reader.take(8)
        group, element, length = item.unpack(item_head)
        if (group, element) == _SEQUENCE_END:
            if keeping:
                walked.kept += item_head
            break
        if (group, element) != _ITEM or length == UNDEFINED:
            raise NotWalked("a value of undefined length that is not fragments")
        if keeping and skippable and len(walked.kept) - start + 8 + length > SKIPPED_ABOVE:
            del walked.kept[start:]
            keeping = False
        if keeping:
            _keeping(walked, 16 + length)
            walked.kept += item_head
            for part in reader.values(length):
                walked.kept += part
        else:
            for _ in reader.values(length):
                pass
    if keeping:
        walked.tags.append(tag)
    else:
        walked.skipped.append(RawDataElement(
            BaseTag(tag), vr, UNDEFINED, None, 0, implicit, little))
