"""Why a frame or a rendered image cannot be given, each with the HTTP status WADO-RS answers.

``render/`` knows nothing of HTTP; ``http_status`` is the mapping PS3.18 suggests, kept
beside the error so that every front door refuses the same request the same way::

    RenderError                     500  (a defect of the stored object, e.g. truncated pixels)
    ├── InvalidFrameNumber          400  frame number below 1 / empty frame list
    ├── InvalidRenderParameters     400  window width < 1, empty viewport, unknown media type
    ├── FrameNotFound               404  frame number beyond Number of Frames
    ├── NoPixelData                 404  the instance has no (7FE0,0010) Pixel Data
    ├── NotRenderable               406  pixel data MIMIC cannot turn into PNG/JPEG
    │   └── UnsupportedTransferSyntax 406 no decoder installed, or frames cannot be split out
    └── CorruptPixelData            500  the stored pixel data does not decode
"""

from __future__ import annotations

from mimic_server.errors import MimicError


class RenderError(MimicError):
    """Root of render/'s refusals; ``http_status`` is what a DICOMweb answer should carry."""

    http_status: int = 500


class InvalidFrameNumber(RenderError):
    """Frame numbers count from 1 (the PS3.18 frame list); 0, negatives, no frames."""

    http_status = 400


class InvalidRenderParameters(RenderError):
    """A rendering parameter that cannot be honoured as given (not a limitation of ours)."""

    http_status = 400


class FrameNotFound(RenderError):
    """A frame number beyond the object's Number of Frames: that resource does not exist."""

    http_status = 404


class NoPixelData(RenderError):
    """The instance has no Pixel Data (a structured report, a presentation state ...)."""

    http_status = 404


class NotRenderable(RenderError):
    """Pixel data MIMIC cannot present as a consumer image (float pixels, video, 64-bit ...).

    406 Not Acceptable: the server has the resource but not in any representation the
    request accepts (PS3.18 media type negotiation)."""

    http_status = 406


class UnsupportedTransferSyntax(NotRenderable):
    """No installed decoder for the stored transfer syntax, or one whose frames cannot be
    separated (MPEG-2 / H.264 / HEVC video, an unknown private syntax)."""


class CorruptPixelData(RenderError):
    """The stored pixel data is shorter than its header says, or its decoder rejects it.

    The bytes passed their SHA-256 check, so this is how the object was received."""
