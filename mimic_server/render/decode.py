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
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID, ExplicitVRLittleEndian

from mimic_server.render.refusals import CorruptPixelData, UnsupportedTransferSyntax
from mimic_server.render.stored import ENCAPSULATED_UNCOMPRESSED, StoredImage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """A frame's samples: (rows, columns) or (rows, columns, samples), and what they mean."""

    pixels: np.ndarray
    #: Photometric Interpretation of ``pixels`` (YBR is already converted to ``RGB``).
    photometric: str
    #: The one-frame data set that was decoded: group 0028 of the header (LUTs, rescale).
    image_pixel: Dataset


def decode_frame(image: StoredImage, number: int) -> DecodedFrame:
    """Decode frame ``number`` (1-based) of ``image``.

    ``UnsupportedTransferSyntax`` when no installed plugin decodes the stored syntax;
    ``CorruptPixelData`` when the decoder rejects the bytes."""
    data = image.frame_bytes(number)
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
    return DecodedFrame(pixels, photometric, ds)


def _decoder(syntax: UID):  # type: ignore[no-untyped-def]
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
