"""A stored Part 10 object seen as an image: its header, and where each frame's bytes lie.

The header is parsed up to the Pixel Data element and no further (``stop_before_pixels``),
its values over 1 KiB read only if the rendering asks for them: metadata never costs a
pixel, nor a document or a private blob it does not use. A frame is then read on its own:
for native pixel data at its computed byte offset (``(n - 1) * frame length`` into the
value), for encapsulated pixel data through ``fragments.py`` (Extended / Basic Offset
Table, else the fragments' item headers: a seek per fragment, no pixel read; found once per
image, not once per frame asked for). The
source may be the stored bytes or a seekable binary file, so a large object need not be in
memory to give one frame.

Deflated objects are the exception: the data set is one zlib stream, so it is inflated
whole (pydicom does) before a frame can be found. The WADO-RS routes never hand one here:
they give the copy ``archive/inflated.py`` inflates a piece at a time.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from struct import unpack
from typing import BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from mimic_server.render.fragments import EncapsulatedFrames
from mimic_server.render.media_types import FRAME_MEDIA_TYPES, NATIVE_SYNTAXES
from mimic_server.render.refusals import (
    CorruptPixelData,
    FrameNotFound,
    InvalidFrameNumber,
    NoPixelData,
    NotRenderable,
    UnsupportedTransferSyntax,
)

#: What the render functions accept: the stored bytes, or a seekable binary file over them.
Part10 = bytes | bytearray | memoryview | BinaryIO

#: Header values longer than this are read only when the rendering asks for them.
DEFER_ABOVE = 1024
PIXEL_DATA = 0x7FE00010
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98"
_FLOAT_PIXELS = {0x7FE00008: "Float Pixel Data", 0x7FE00009: "Double Float Pixel Data"}


@dataclass(slots=True)
class StoredImage:
    """The header of one stored image and the means to read any one of its frames."""

    header: Dataset
    transfer_syntax: UID
    number_of_frames: int
    encapsulated: bool
    source: BinaryIO
    #: Offset in ``source`` of the first byte of the Pixel Data value.
    value_offset: int
    #: Length of the Pixel Data value; None when undefined (encapsulated).
    value_length: int | None
    #: OB or OW as encoded (explicit VR); None for implicit VR.
    pixel_vr: str | None = None
    #: Where each encapsulated frame lies: found on the first frame asked for, then kept.
    encapsulated_frames: EncapsulatedFrames | None = None

    def check_frame_number(self, number: int) -> None:
        """Refuse a frame number this object does not have (1-based, PS3.18 frame list)."""
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise InvalidFrameNumber(f"frame numbers start at 1, not {number!r}")
        if number > self.number_of_frames:
            raise FrameNotFound(
                f"frame {number} requested, the instance has {self.number_of_frames}"
            )

    def frame_bytes(self, number: int) -> bytes:
        """Frame ``number`` (1-based) as stored: a native frame's pixel bytes (little endian,
        1-bit frames repacked to start on a byte), or an encapsulated frame's bitstream."""
        self.check_frame_number(number)
        if self.encapsulated:
            return self._encapsulated_frame(number - 1)
        return self._native_frame(number - 1)

    def locate(self, numbers: Sequence[int]) -> None:
        """Check that each frame of ``numbers`` is in the stored data, reading no pixel:
        for encapsulated data the frames' fragments are found (once for the image), for
        native data each frame's extent is held against the value's length. What is then
        left to fail as the frames are read is the storage itself."""
        for number in numbers:
            self.check_frame_number(number)
        if self.encapsulated:
            frames = self._frames()
            for number in set(numbers):
                frames.pieces(number - 1)
        elif numbers and self.value_length is not None:
            self._native_extent(max(numbers) - 1)

    def _frames(self) -> EncapsulatedFrames:
        if self.encapsulated_frames is None:
            extended = None
            if "ExtendedOffsetTable" in self.header \
                    and "ExtendedOffsetTableLengths" in self.header:
                extended = (
                    bytes(self.header.ExtendedOffsetTable),
                    bytes(self.header.ExtendedOffsetTableLengths),
                )
            try:
                self.encapsulated_frames = EncapsulatedFrames(
                    self.source, self.value_offset, self.number_of_frames, extended)
            except (ValueError, EOFError, OSError) as exc:
                raise CorruptPixelData(f"the frames cannot be found: {exc}") from exc
        return self.encapsulated_frames

    def _encapsulated_frame(self, index: int) -> bytes:
        try:
            return self._frames().read(index)
        except (ValueError, EOFError, OSError) as exc:
            raise CorruptPixelData(f"frame {index + 1} cannot be read: {exc}") from exc

    def _native_layout(self) -> tuple[int, int]:
        """(Bits Allocated, bits of one frame) of native pixel data."""
        header = self.header
        rows, columns = _required_int(header, "Rows"), _required_int(header, "Columns")
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        bits = _required_int(header, "BitsAllocated")
        if bits == 1:
            return bits, rows * columns * samples
        if bits % 8:
            raise NotRenderable(f"Bits Allocated {bits} is not a whole number of bytes")
        length = rows * columns * samples * bits // 8
        if samples == 3 and header.get("PhotometricInterpretation") == "YBR_FULL_422":
            length = length * 2 // 3  # two chroma samples per two pixels (PS3.3 C.7.6.3.1.2)
        return bits, length * 8

    def _native_extent(self, index: int) -> None:
        """Refuse frame ``index`` if it ends past the stored value (as its read would)."""
        _, frame_bits = self._native_layout()
        end = -(-(index + 1) * frame_bits // 8)
        if self.value_length is not None and end > self.value_length:
            raise CorruptPixelData(
                f"Pixel Data holds {self.value_length} bytes, the frame needs {end}")

    def _native_frame(self, index: int) -> bytes:
        bits, frame_bits = self._native_layout()
        if bits == 1:
            return self._packed_bits_frame(index, frame_bits)
        length = frame_bits // 8
        if self.transfer_syntax == BIG_ENDIAN and bits == 8 and self.pixel_vr == "OW":
            return self._swapped_bytes_frame(index * length, length)
        data = self._read_value(index * length, length)
        if self.transfer_syntax == BIG_ENDIAN and bits > 8:
            data = np.frombuffer(data, f">u{bits // 8}").astype(f"<u{bits // 8}").tobytes()
        return data

    def _swapped_bytes_frame(self, start: int, length: int) -> bytes:
        """8-bit samples in OW big endian: each pair of bytes is one swapped 16-bit word, so
        read whole words around the frame, swap them, and cut the frame out."""
        first = start - start % 2
        end = start + length + (start + length) % 2
        words = np.frombuffer(self._read_value(first, end - first), ">u2")
        data = words.astype("<u2").tobytes()
        return data[start - first : start - first + length]

    def _packed_bits_frame(self, index: int, bits_per_frame: int) -> bytes:
        """1-bit frames are packed across frame boundaries (PS3.5 8.1.1): unpack the bytes
        that hold this frame and repack it so it starts on a byte (padded to whole bytes)."""
        first_bit = index * bits_per_frame
        start, end = first_bit // 8, -(-(first_bit + bits_per_frame) // 8)
        chunk = np.frombuffer(self._read_value(start, end - start), np.uint8)
        if first_bit % 8 == 0 and bits_per_frame % 8 == 0:
            return chunk.tobytes()
        bits = np.unpackbits(chunk, bitorder="little")
        skip = first_bit - start * 8
        return np.packbits(bits[skip : skip + bits_per_frame], bitorder="little").tobytes()

    def _read_value(self, start: int, length: int) -> bytes:
        if self.value_length is not None and start + length > self.value_length:
            raise CorruptPixelData(
                f"Pixel Data holds {self.value_length} bytes, the frame needs {start + length}"
            )
        self.source.seek(self.value_offset + start)
        data = self.source.read(length)
        if len(data) != length:
            raise CorruptPixelData("Pixel Data ends before the frame does")
        return data


def open_image(part10: Part10) -> StoredImage:
    """Parse the header of ``part10`` and locate its Pixel Data value, reading no pixel.

    Raises ``NoPixelData`` when there is none, ``UnsupportedTransferSyntax`` for a transfer
    syntax whose frames cannot be told apart, ``NotRenderable`` for float pixel data and
    ``CorruptPixelData`` when the header itself cannot be read."""
    source = _as_file(part10)
    source.seek(0)
    try:
        # Values over 1 KiB left unread until asked for (from ``source``, which stays open
        # while the image is rendered): an Encapsulated PDF's document, a vendor's private
        # blob before the pixels were read whole, 64 MiB of them for a 404.
        header = dcmread(source, stop_before_pixels=True, force=True, defer_size=DEFER_ABOVE)
    except Exception as exc:  # any parser failure on stored bytes: the object is the problem
        raise CorruptPixelData(f"the stored object cannot be parsed: {exc}") from exc
    meta = getattr(header, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        raise CorruptPixelData("the stored object has no Transfer Syntax UID")
    syntax = UID(str(syntax))
    if syntax not in NATIVE_SYNTAXES and syntax not in FRAME_MEDIA_TYPES:
        raise UnsupportedTransferSyntax(
            f"frames of transfer syntax {syntax} ({syntax.name}) cannot be separated"
        )
    if syntax == DEFLATED:
        return _inflated_image(part10, header, syntax)
    tag_start = source.tell()
    head = source.read(8)
    if len(head) < 8:
        raise NoPixelData("the instance has no Pixel Data")
    little = syntax != BIG_ENDIAN
    group, element = unpack("<HH" if little else ">HH", head[:4])
    tag = group << 16 | element
    if tag in _FLOAT_PIXELS:
        raise NotRenderable(f"{_FLOAT_PIXELS[tag]} is not rendered")
    if tag != PIXEL_DATA:
        raise NoPixelData("the instance has no Pixel Data")
    pixel_vr = None
    if syntax == "1.2.840.10008.1.2":
        (length,) = unpack("<L", head[4:8])
        value_offset = tag_start + 8
    else:
        pixel_vr = head[4:6].decode("ascii", "replace")
        (length,) = unpack("<L" if little else ">L", source.read(4))
        value_offset = tag_start + 12
    encapsulated = length == 0xFFFFFFFF
    if encapsulated != (syntax in FRAME_MEDIA_TYPES):
        raise CorruptPixelData(
            f"Pixel Data is {'' if encapsulated else 'not '}encapsulated "
            f"in transfer syntax {syntax}"
        )
    return StoredImage(
        header=header,
        transfer_syntax=syntax,
        number_of_frames=_number_of_frames(header),
        encapsulated=encapsulated,
        source=source,
        value_offset=value_offset,
        value_length=None if encapsulated else length,
        pixel_vr=pixel_vr,
    )


def _inflated_image(part10: Part10, header: Dataset, syntax: UID) -> StoredImage:
    source = _as_file(part10)
    source.seek(0)
    try:
        full = dcmread(source, force=True)
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        raise CorruptPixelData(f"the deflated object cannot be inflated: {exc}") from exc
    if "PixelData" not in full:
        raise NoPixelData("the instance has no Pixel Data")
    value = bytes(full.PixelData)
    return StoredImage(
        header=header,
        transfer_syntax=syntax,
        number_of_frames=_number_of_frames(header),
        encapsulated=False,
        source=io.BytesIO(value),
        value_offset=0,
        value_length=len(value),
    )


def _as_file(part10: Part10) -> BinaryIO:
    if isinstance(part10, bytes | bytearray | memoryview):
        return io.BytesIO(part10)
    return part10


def _number_of_frames(header: Dataset) -> int:
    """Number of Frames, 1 when absent or unusable (PS3.3: absent means one frame)."""
    try:
        value = int(header.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1
    return max(value, 1)


def _required_int(header: Dataset, keyword: str) -> int:
    value = header.get(keyword)
    if value is None or value == "":
        raise CorruptPixelData(f"the image has no {keyword}")
    return int(value)
