"""WADO-RS Retrieve Frames (PS3.18): frames as stored, without decoding them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

from mimic_server.render.media_types import OCTET_STREAM, frame_media_type
from mimic_server.render.refusals import InvalidFrameNumber, UnsupportedTransferSyntax
from mimic_server.render.stored import Part10, open_image


class Frame(NamedTuple):
    """One frame for a multipart/related answer part."""

    #: Native: the frame's pixel bytes (little endian; 1-bit frames start on a byte).
    #: Encapsulated: the frame's compressed bitstream exactly as stored.
    data: bytes
    #: Bare media type: ``application/octet-stream``, ``image/jpeg``, ``image/jp2``,
    #: ``image/jls``, ``image/jpx``, ``image/jphc`` or ``image/dicom-rle``.
    media_type: str
    #: The stored Transfer Syntax UID (the ``transfer-syntax`` media type parameter).
    transfer_syntax: str

    @property
    def content_type(self) -> str:
        """The part's Content-Type, e.g. ``image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50``.

        Native frames are always sent little endian, so their parameter is Explicit VR
        Little Endian whatever the stored syntax (PS3.18's default for octet-stream)."""
        syntax = self.transfer_syntax
        if self.media_type == OCTET_STREAM and syntax != "1.2.840.10008.1.2.1.98":
            syntax = "1.2.840.10008.1.2.1"
        return f"{self.media_type}; transfer-syntax={syntax}"


def frames(part10: Part10, frame_numbers: Sequence[int]) -> list[Frame]:
    """The requested frames of one stored instance, in the order asked, as stored.

    ``part10`` is the stored Part 10 bytes (or a seekable binary file over them);
    ``frame_numbers`` count from 1, repeats allowed. Every number is checked before any
    frame is read, so a bad list costs no pixel I/O. Only the requested frames are read.

    Raises (``refusals``): ``InvalidFrameNumber`` (400: empty list, number < 1),
    ``FrameNotFound`` (404: beyond Number of Frames), ``NoPixelData`` (404),
    ``UnsupportedTransferSyntax`` (406: video or unknown syntax), ``NotRenderable``
    (406: float pixel data), ``CorruptPixelData`` (500)."""
    return list(each_frame(part10, frame_numbers))


def each_frame(part10: Part10, frame_numbers: Sequence[int]) -> Iterator[Frame]:
    """``frames``, each read as the iterator reaches it: one frame in memory at a time.

    The refusals of ``frames`` are raised by this call, before any frame is read: every
    number is checked and every frame located (an encapsulated frame's fragments found, a
    native frame's extent held against the stored value), so that an answer streamed from
    the iterator is not cut off by a frame missing from the object. Only a failure to read
    the storage can still raise while iterating."""
    if not frame_numbers:
        raise InvalidFrameNumber("no frame numbers requested")
    image = open_image(part10)
    media_type = frame_media_type(image.transfer_syntax)
    if media_type is None:  # open_image refuses these already; kept for a clear invariant
        raise UnsupportedTransferSyntax(f"no frames in {image.transfer_syntax}")
    image.locate(frame_numbers)
    syntax = str(image.transfer_syntax)
    return (Frame(image.frame_bytes(number), media_type, syntax) for number in frame_numbers)
