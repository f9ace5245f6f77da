"""A JPEG 2000 frame decoded at a lower resolution, for thumbnails.

A JPEG 2000 codestream holds its image as resolution levels: decoding 1/4 of the width and
height skips the two finest levels' wavelet work, ~10x less than the full decode a 128 px
thumbnail of a 512 px CT would otherwise pay for. pylibjpeg-openjpeg (the renderer's decoder)
exposes no reduced decode; Pillow's JPEG 2000 plugin (the same openjpeg) does, as
``Image.reduce``. Pillow widens each sample to its 8- or 16-bit container: it adds
2^(precision-1) to signed samples and shifts left by (container bits - precision). Both steps
are exact, so they are undone here with the precision and signedness the codestream's SIZ
marker states (read by pylibjpeg-openjpeg's ``get_parameters``): the samples are the stored
values' low-pass approximation at that level, in the stored value range, and the modality LUT
and window then apply as to a full-size frame.

Grayscale (one component) only; anything else, or any surprise, answers None and the caller
decodes the full frame.
"""

from __future__ import annotations

import io
import logging
import math
import warnings

import numpy as np
from openjpeg.utils import get_parameters
from PIL import Image
from pydicom.uid import JPEG2000, UID, JPEG2000Lossless

log = logging.getLogger(__name__)

SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000})
#: openjpeg refuses to reduce below the codestream's number of decomposition levels (five by
#: default for DICOM encoders); beyond this a thumbnail has nothing to gain.
MAX_REDUCE = 4
_CONTAINER_BITS = {"L": 8, "I;16": 16, "I;16L": 16}


def reduce_for(rows: int, columns: int, bounds: tuple[int, int]) -> int:
    """The most halvings that keep the frame at least as large as its fit inside ``bounds``
    (so the last resize still only shrinks): 2 for 512 x 512 into 128 x 128."""
    scale = min(bounds[0] / columns, bounds[1] / rows)
    if scale > 0.5:
        return 0
    return max(0, min(MAX_REDUCE, math.floor(math.log2(1 / scale))))


def decode_reduced(syntax: UID, codestream: bytes, reduce: int) -> np.ndarray | None:
    """The frame's stored values at 1/2^reduce of its size, or None (decode it whole)."""
    if reduce <= 0 or syntax not in SYNTAXES:
        return None
    try:
        params = get_parameters(codestream)
        if int(params["samples_per_pixel"]) != 1:
            return None
        precision, signed = int(params["precision"]), bool(params["is_signed"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(codestream))
            picture.reduce = reduce
            picture.load()
        container = _CONTAINER_BITS.get(picture.mode)
        if container is None or precision > container:
            return None
        widened = np.asarray(picture)
    except Exception:
        log.debug("reduced JPEG 2000 decode not possible", exc_info=True)
        return None
    return stored_values(widened, container, precision, signed)


def stored_values(widened: np.ndarray, container: int, precision: int,
                  signed: bool) -> np.ndarray:
    """Undo Pillow's widening of ``precision``-bit samples to its ``container``-bit mode."""
    values = (widened.astype(np.int32) >> (container - precision)) - (
        (1 << (precision - 1)) if signed else 0)
    return values.astype(_stored_dtype(precision, signed))


def _stored_dtype(precision: int, signed: bool) -> np.dtype:
    if precision <= 8:
        return np.dtype(np.int8 if signed else np.uint8)
    return np.dtype(np.int16 if signed else np.uint16)
