"""One frame decoded to numbers, by pydicom's pixel decoders and their pylibjpeg plugins.

Only the requested frame is handed to the decoder: a one-frame data set is built from the
header's Image Pixel elements (group 0028) and that frame's bytes, so the cost of rendering
frame 40 of a 300-frame object is one frame's decode, not 300.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.pixels.decoders.base import Decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID, ExplicitVRLittleEndian

from mimic_server.render.reduced import decode_reduced
from mimic_server.render.refusals import (
    CorruptPixelData,
    NotRenderable,
    UnsupportedTransferSyntax,
)
from mimic_server.render.stored import ENCAPSULATED_UNCOMPRESSED, StoredImage

log = logging.getLogger(__name__)

#: The most samples (rows x columns x samples per pixel) of one frame MIMIC decodes: a
#: 6k x 10k mammogram is 60 M. A header can claim 65535 x 65535 x 3 over a few bytes of
#: compressed data; the decoder would allocate that before failing.
MAX_FRAME_SAMPLES = 1 << 26


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """A frame's samples: (rows, columns) or (rows, columns, samples), and what they mean."""

    pixels: np.ndarray
    #: Photometric Interpretation of ``pixels`` (YBR is already converted to ``RGB``).
    photometric: str
    #: Group 0028 of the header (LUTs, rescale, window), in the stored encoding.
    image_pixel: Dataset


def decode_frame(image: StoredImage, number: int, reduce: int = 0) -> DecodedFrame:
    """Decode frame ``number`` (1-based) of ``image``; with ``reduce``, at 1/2^reduce of its
    size where the stored syntax allows it cheaply (grayscale JPEG 2000: ``reduced.py``),
    else whole.

    ``UnsupportedTransferSyntax`` when no installed plugin decodes the stored syntax;
    ``CorruptPixelData`` when the decoder rejects the bytes."""
    _check_size(image)
    data = image.frame_bytes(number)
    if reduce and image.encapsulated:
        small = decode_reduced(image.transfer_syntax, data, reduce)
        if small is not None:
            return DecodedFrame(small, str(image.header.PhotometricInterpretation),
                                _image_pixel(image))
    ds = image.header.group_dataset(0x0028)
    ds.NumberOfFrames = 1
    syntax = image.transfer_syntax
    if not image.encapsulated or syntax == ENCAPSULATED_UNCOMPRESSED:
        # frame_bytes gives native frames little endian, whatever the stored syntax.
        syntax = ExplicitVRLittleEndian
        ds.PixelData = data
        ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    else:
        ds.PixelData = encapsulate([data])
        ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.set_original_encoding(False, True)
    decoder = _decoder(syntax)
    try:
        pixels, meta = decoder.as_array(
            ds, index=0, validate=True, raw=False, **as_pixel_options(ds)
        )
    except (ValueError, RuntimeError, TypeError, AttributeError, KeyError) as exc:
        log.debug("frame decode failed", exc_info=True)
        raise CorruptPixelData(f"frame {number} does not decode: {exc}") from exc
    photometric = str(meta.get("photometric_interpretation", ds.PhotometricInterpretation))
    # The LUTs (palette, modality, VOI) are raw bytes in the stored encoding: the data set
    # that applies them keeps the stored transfer syntax, not the decoder's little endian.
    return DecodedFrame(pixels, photometric, _image_pixel(image))


def _image_pixel(image: StoredImage) -> Dataset:
    image_pixel = image.header.group_dataset(0x0028)
    image_pixel.file_meta = image.header.file_meta
    image_pixel.set_original_encoding(*image.header.original_encoding[:2])
    return image_pixel


def _check_size(image: StoredImage) -> None:
    header = image.header
    try:
        samples = int(header.Rows) * int(header.Columns) * int(header.get("SamplesPerPixel", 1))
    except (AttributeError, TypeError, ValueError) as exc:
        raise CorruptPixelData("the image has no usable Rows / Columns") from exc
    if samples > MAX_FRAME_SAMPLES:
        raise NotRenderable(
            f"a frame of {samples} samples is more than the {MAX_FRAME_SAMPLES} MIMIC renders"
        )


def _decoder(syntax: UID) -> Decoder:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntax(
            f"no decoder for transfer syntax {syntax} ({syntax.name})"
        ) from exc
    if not decoder.is_available:
        raise UnsupportedTransferSyntax(
            f"no installed plugin decodes transfer syntax {syntax} ({syntax.name})"
        )
    return decoder
