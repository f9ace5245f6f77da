"""The pixel side of WADO-RS: pure functions over stored Part 10 bytes (or a seekable file).

::

    frames(part10, [1, 3])              -> [Frame(data, media_type, transfer_syntax), ...]
    render(part10, frame=1, media_type="image/png", window=(40, 400), viewport=(512, 512))
    thumbnail(part10, size=(128, 128), media_type="image/jpeg")

No web, no DIMSE, no index: the callers (``web/dicomweb``, the console) read verified bytes
with ``archive.read`` and map the ``refusals`` (each with ``http_status``) to answers.
Imports only ``errors`` from the project, plus pydicom, numpy, Pillow and the pylibjpeg
decoder plugins (uncompressed, RLE, JPEG baseline / extended / lossless, JPEG-LS,
JPEG 2000).
"""

from mimic_server.render.frames import Frame, each_frame, frames
from mimic_server.render.media_types import JPEG, PNG, RENDERED_MEDIA_TYPES, frame_media_type
from mimic_server.render.refusals import (
    CorruptPixelData,
    FrameNotFound,
    InvalidFrameNumber,
    InvalidRenderParameters,
    NoPixelData,
    NotRenderable,
    RenderError,
    UnsupportedTransferSyntax,
)
from mimic_server.render.rendered import render, thumbnail

__all__ = [
    "JPEG",
    "PNG",
    "RENDERED_MEDIA_TYPES",
    "CorruptPixelData",
    "Frame",
    "FrameNotFound",
    "InvalidFrameNumber",
    "InvalidRenderParameters",
    "NoPixelData",
    "NotRenderable",
    "RenderError",
    "UnsupportedTransferSyntax",
    "each_frame",
    "frame_media_type",
    "frames",
    "render",
    "thumbnail",
]
