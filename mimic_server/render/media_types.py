"""Which media type carries a frame of each transfer syntax (as PS3.18 pairs them).

A frame leaves the archive as it is stored: native pixel data as
``application/octet-stream``, compressed pixel data as the bitstream's own media type, with
the transfer syntax as a ``transfer-syntax`` parameter so that a client knows exactly which
decoder to use (MIMIC does not transcode).
"""

from __future__ import annotations

OCTET_STREAM = "application/octet-stream"

#: Encapsulated transfer syntax UID -> the media type of one of its frames.
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "image/jpeg",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": "image/jpeg",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70": "image/jpeg",  # JPEG Lossless, First-Order Prediction (SV1)
    "1.2.840.10008.1.2.4.80": "image/jls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "image/jls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "image/jp2",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91": "image/jp2",  # JPEG 2000
    "1.2.840.10008.1.2.4.92": "image/jpx",  # JPEG 2000 Part 2 Multi-component Lossless
    "1.2.840.10008.1.2.4.93": "image/jpx",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.201": "image/jphc",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "image/jphc",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "image/jphc",  # HTJ2K
    "1.2.840.10008.1.2.4.110": "image/jxl",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.111": "image/jxl",  # JPEG XL JPEG Recompression
    "1.2.840.10008.1.2.4.112": "image/jxl",  # JPEG XL
    "1.2.840.10008.1.2.5": "image/dicom-rle",  # RLE Lossless
    "1.2.840.10008.1.2.1.98": OCTET_STREAM,  # Encapsulated Uncompressed Explicit VR LE
}

#: Native (not encapsulated) transfer syntaxes: frames are slices of the Pixel Data value.
NATIVE_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    }
)

#: Rendered media types MIMIC produces (the single-frame image types of PS3.18).
PNG = "image/png"
JPEG = "image/jpeg"
RENDERED_MEDIA_TYPES = (JPEG, PNG)


def frame_media_type(transfer_syntax: str) -> str | None:
    """The media type of one frame stored in ``transfer_syntax``; None if it has no
    separable frames (video, an unknown private syntax)."""
    if transfer_syntax in NATIVE_SYNTAXES:
        return OCTET_STREAM
    return FRAME_MEDIA_TYPES.get(transfer_syntax)
