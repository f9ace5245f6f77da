"""Where each frame of encapsulated Pixel Data lies (PS3.5 A.4), found once per stored image.

pydicom's ``get_frame`` finds one frame per call: without a Basic Offset Table it walks every
fragment's item header from the first again, so a frame list of 1,024 numbers of a
100,000-frame object walked 100 million item headers (68 s); with a table it parses the
whole table per call. Here the table (Extended, else Basic) is read once, or, without one,
the fragments' item headers are walked once, and each frame is then a list of byte ranges.
Frames are told apart as pydicom tells them (so a frame is the same bytes): by the Extended
Offset Table, else the Basic Offset Table, else one fragment per frame when there are as
many fragments as frames, all fragments for a single frame, else by the JPEG EOI / J2K EOC
marker ending a frame's last fragment.
"""

from __future__ import annotations

from array import array
from struct import unpack
from typing import BinaryIO

from mimic_server.render.refusals import CorruptPixelData

_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_EOI = b"\xff\xd9"
#: pydicom looks for the end-of-image marker within a fragment's last ten bytes.
_EOI_TAIL = 10

#: A frame's bytes: (position in the source, length) of each of its fragments' values.
Pieces = list[tuple[int, int]]


class EncapsulatedFrames:
    """The frames of one encapsulated Pixel Data value in ``source``."""

    def __init__(self, source: BinaryIO, value_offset: int, number_of_frames: int,
                 extended: tuple[bytes, bytes] | None) -> None:
        self.source = source
        self.number_of_frames = number_of_frames
        source.seek(value_offset)
        tag, length = _item_header(source.read(8))
        if tag != _ITEM or length is None or length % 4:
            raise CorruptPixelData("encapsulated Pixel Data has no Basic Offset Table item")
        basic = source.read(length)
        if len(basic) != length:
            raise CorruptPixelData("encapsulated Pixel Data ends in its Basic Offset Table")
        #: The first fragment's item header.
        self.first = value_offset + 8 + length
        self._extended: tuple[array[int], array[int]] | None = None
        self._basic: array[int] | None = None
        #: Without either table: every fragment's value (position, length), then the index
        #: of each frame's first fragment.
        self._fragments: array[int] | None = None
        self._starts: list[int] | None = None
        if extended is not None:
            offsets, lengths = array("Q"), array("Q")
            offsets.frombytes(extended[0][: len(extended[0]) // 8 * 8])
            lengths.frombytes(extended[1][: len(extended[1]) // 8 * 8])
            self._extended = offsets, lengths
        elif length:
            self._basic = array("L", unpack(f"<{length // 4}L", basic))
        else:
            self._fragments = self._walk(self.first, None)
            self._starts = self._frame_starts()

    def pieces(self, index: int) -> Pieces:
        """Frame ``index`` (0-based) as byte ranges of ``source``; CorruptPixelData if the
        data holds no such frame."""
        if self._extended is not None:
            offsets, lengths = self._extended
            if index >= min(len(offsets), len(lengths)):
                raise CorruptPixelData(f"the Extended Offset Table has no frame {index + 1}")
            return [(self.first + offsets[index] + 8, lengths[index])]
        if self._basic is not None:
            basic = self._basic
            if index >= len(basic):
                raise CorruptPixelData(f"the Basic Offset Table has no frame {index + 1}")
            end = self.first + basic[index + 1] if index + 1 < len(basic) else None
            fragments = self._walk(self.first + basic[index], end)
            return [(fragments[i], fragments[i + 1]) for i in range(0, len(fragments), 2)]
        assert self._fragments is not None and self._starts is not None
        if index + 1 >= len(self._starts):
            raise CorruptPixelData(f"encapsulated Pixel Data holds no frame {index + 1}")
        fragments = self._fragments
        return [(fragments[2 * i], fragments[2 * i + 1])
                for i in range(self._starts[index], self._starts[index + 1])]

    def read(self, index: int) -> bytes:
        out = []
        for position, length in self.pieces(index):
            self.source.seek(position)
            data = self.source.read(length)
            if len(data) != length:
                raise CorruptPixelData(f"frame {index + 1} ends before its fragment does")
            out.append(data)
        return b"".join(out)

    def _walk(self, start: int, end: int | None) -> array[int]:
        """(value position, length) of each fragment from ``start`` to ``end`` (else to the
        Sequence Delimitation Item or the end of the data), flattened."""
        found = array("Q")
        source, position = self.source, start
        while end is None or position < end:
            source.seek(position)
            tag, length = _item_header(source.read(8))
            if tag is None or tag == _SEQUENCE_DELIMITER:
                break
            if tag != _ITEM or length is None:
                raise CorruptPixelData(
                    f"encapsulated Pixel Data has no fragment item at byte {position}")
            found.extend((position + 8, length))
            position += 8 + length
        return found

    def _frame_starts(self) -> list[int]:
        """Index of each frame's first fragment, and one past the last: as pydicom's
        ``get_frame`` divides fragments into frames when there is no offset table."""
        assert self._fragments is not None
        count, frames = len(self._fragments) // 2, self.number_of_frames
        if count == 1 or count == frames:
            return list(range(count + 1))
        if frames == 1:
            return [0, count]
        starts = [0]
        for i in range(count):
            position, length = self._fragments[2 * i], self._fragments[2 * i + 1]
            tail = min(length, _EOI_TAIL)
            self.source.seek(position + length - tail)
            if _EOI in self.source.read(tail):
                starts.append(i + 1)
        if starts[-1] != count:  # fragments after the last marker: pydicom's last frame
            starts.append(count)
        return starts


def _item_header(head: bytes) -> tuple[int | None, int | None]:
    """(tag, length) of an item header; (None, None) at the end of the data; length None
    when undefined."""
    if len(head) < 8:
        return None, None
    group, element, length = unpack("<HHL", head)
    return group << 16 | element, None if length == 0xFFFFFFFF else length
