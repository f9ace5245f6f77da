"""One frame decoded to numbers, by pydicom's pixel decoders and their pylibjpeg plugins.

Only the requested frame is handed to the decoder: a one-frame data set is built from the
header's Image Pixel elements (group 0028) and that frame's bytes, so the cost of rendering
frame 40 of a 300-frame object is one frame's decode, not 300.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from openjpeg.utils import get_parameters as j2k_parameters
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
    check_size(image)
    data = image.frame_bytes(number)
    if image.encapsulated and image.transfer_syntax != ENCAPSULATED_UNCOMPRESSED:
        _check_codestream(image, data, number)
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


def check_size(image: StoredImage) -> None:
    """Refuse a frame whose header's Rows x Columns x Samples per Pixel is unusable or more
    than ``MAX_FRAME_SAMPLES``: before anything sized by them (a decode, a thumbnail's
    reduction) is computed."""
    header = image.header
    try:
        rows, columns = int(header.Rows), int(header.Columns)
        samples = rows * columns * int(header.get("SamplesPerPixel", 1))
    except (AttributeError, TypeError, ValueError) as exc:
        raise CorruptPixelData("the image has no usable Rows / Columns") from exc
    if rows < 1 or columns < 1:
        raise CorruptPixelData(f"the image has {rows} Rows and {columns} Columns")
    if samples > MAX_FRAME_SAMPLES:
        raise NotRenderable(
            f"a frame of {samples} samples is more than the {MAX_FRAME_SAMPLES} MIMIC renders"
        )


#: JPEG start-of-frame markers of the non-hierarchical processes (ITU-T T.81 B.1.1.3: SOF0-3,
#: 9-11) and JPEG-LS's SOF55 (ITU-T T.87): each followed by precision, lines, samples per
#: line, components.
_SOF_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC9, 0xCC), 0xF7})
#: The hierarchical process's markers (T.81 Annex J): DHP declares the image's size before
#: a first, smaller frame; EXP and the differential frames (SOF5-7, 13-15) grow it to that
#: size. No JPEG transfer syntax of DICOM is hierarchical, and the decoder would allocate
#: the DHP's size past a first SOF that agrees with the header.
_HIERARCHICAL_MARKERS = frozenset({0xDE, 0xDF, *range(0xC5, 0xC8), *range(0xCD, 0xD0)})
_JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                            "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
                            "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
_J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                           "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93",
                           "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                           "1.2.840.10008.1.2.4.203"})


def _check_codestream(image: StoredImage, data: bytes, number: int) -> None:
    """Refuse a compressed frame whose codestream declares another size than the header's
    Rows x Columns, or more than ``MAX_FRAME_SAMPLES``, before any decoder sees it.

    The decoders allocate what the codestream's own SOF / SIZ marker declares, not what
    the header says: a 1 KB frame declaring 30000 x 30000 took 26 s and 4.3 GiB to refuse
    after its decode. RLE frames are sized by the header (``check_size``); a syntax whose
    size cannot be read here has no decoder installed either."""
    syntax = image.transfer_syntax
    _decoder(syntax)  # a syntax no plugin decodes is that refusal (406), whatever its frame
    if syntax == "1.2.840.10008.1.2.5":
        return
    if syntax in _JPEG_SYNTAXES:
        declared = _jpeg_size(data)
    elif syntax in _J2K_SYNTAXES:
        try:  # the main header only (opj_read_header): no tile is decoded
            params = j2k_parameters(data)
            declared = (int(params["rows"]), int(params["columns"]),
                        int(params["samples_per_pixel"]))
        except Exception:  # any failure to read the main header: not decodable
            declared = None
    else:
        raise UnsupportedTransferSyntax(
            f"no installed plugin decodes transfer syntax {syntax} ({syntax.name})")
    if declared is None:
        raise CorruptPixelData(f"frame {number} has no readable frame header")
    rows, columns, components = declared
    header = image.header
    if (rows, columns) != (int(header.Rows), int(header.Columns)) \
            or rows * columns * components > MAX_FRAME_SAMPLES:
        raise CorruptPixelData(
            f"frame {number} declares {columns} x {rows} x {components} samples; "
            f"the header says {int(header.Columns)} x {int(header.Rows)}")


def _jpeg_size(data: bytes) -> tuple[int, int, int] | None:
    """(lines, samples per line, components) of a JPEG or JPEG-LS frame's first SOF
    marker, walking the marker segments before it by their lengths; None if there is none
    before the first scan (SOS) or the data ends first."""
    if data[:2] != b"\xff\xd8":
        return None
    position, end = 2, len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte before a marker (T.81 B.1.1.2)
            position += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length, no parameters
            position += 2
            continue
        if marker in (0xDA, 0xD9) or marker in _HIERARCHICAL_MARKERS:
            return None  # a scan or the end before any frame header; a hierarchical stream
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in _SOF_MARKERS:
            if length < 8 or position + 10 > end:
                return None
            lines = int.from_bytes(data[position + 5:position + 7], "big")
            samples = int.from_bytes(data[position + 7:position + 9], "big")
            return lines, samples, data[position + 9]
        position += 2 + length
    return None


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
