"""Stored values to 8-bit display values: modality LUT, VOI window, polarity, colour.

The grayscale pipeline of PS3.3 C.11 / PS3.4 N.2, reduced to what a consumer image needs:
stored values -> Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence) ->
VOI (a window from the request, else the object's first Window Center/Width with its VOI
LUT Function, else its first VOI LUT, else the frame's own min/max) -> 0..255, inverted for
MONOCHROME1 so that every rendered image reads as MONOCHROME2. Enhanced multi-frame
objects keep rescale and window per frame in functional groups; those are honoured.
Colour frames (RGB after decoding, or PALETTE COLOR through its LUTs) are scaled to 8 bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi

from mimic_server.render.decode import DecodedFrame
from mimic_server.render.refusals import InvalidRenderParameters, NotRenderable
from mimic_server.render.segmented import apply_segmented_palette, is_segmented

#: (center, width) of a VOI window, in modality units (after rescale).
Window = tuple[float, float]

_GRAY = {"MONOCHROME1", "MONOCHROME2"}


def display_pixels(
    frame: DecodedFrame, header: Dataset, index: int, window: Window | None
) -> np.ndarray:
    """The frame as uint8: (rows, columns) for grayscale, (rows, columns, 3) for colour.

    ``index`` is the 0-based frame number (per-frame functional groups); ``window``, when
    given, replaces the object's own VOI."""
    if window is not None:
        check_window(window)
    if frame.photometric in _GRAY:
        gray = _grayscale(frame, header, index, window)
        return 255 - gray if frame.photometric == "MONOCHROME1" else gray
    if frame.photometric == "PALETTE COLOR":
        if is_segmented(frame.image_pixel):  # expanded here, bounded (segmented.py)
            return _to_8_bits(apply_segmented_palette(frame.pixels, frame.image_pixel), 16)
        return _to_8_bits(apply_color_lut(frame.pixels, frame.image_pixel), 16)
    if frame.photometric == "RGB" and frame.pixels.ndim == 3:
        bits = int(frame.image_pixel.get("BitsStored") or frame.image_pixel.BitsAllocated)
        return _to_8_bits(frame.pixels, bits)
    raise NotRenderable(f"Photometric Interpretation {frame.photometric} is not rendered")


def check_window(window: Window) -> None:
    """Refuse a window PS3.3 C.11.2.1.2 does not define (width below 1, not finite)."""
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise InvalidRenderParameters("a window is (center, width)") from exc
    if not (np.isfinite(center) and np.isfinite(width)) or width < 1:
        raise InvalidRenderParameters("window width must be at least 1 and both finite")


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR onto 0..255: below ``c - 0.5 - (w-1)/2`` black, above
    ``c - 0.5 + (w-1)/2`` white, linear between (width 1 is a threshold)."""
    x = values.astype(np.float64, copy=False)
    if width <= 1:
        return np.where(x <= center - 0.5, 0, 255).astype(np.uint8)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.rint(np.clip(y, 0.0, 255.0)).astype(np.uint8)


def _grayscale(
    frame: DecodedFrame, header: Dataset, index: int, window: Window | None
) -> np.ndarray:
    """Modality LUT then VOI, as one lookup table over the frame's stored value range when
    that range is small (integers up to 17 bits wide): 2^16 table entries computed in float
    cost less than a float pass over a 512 x 512 frame, and the lookup is one gather."""
    lut_ds = _frame_view(header, frame.image_pixel, index)
    pixels = frame.pixels
    if pixels.dtype.kind in "ui" and pixels.size > _TABLE_WORTHWHILE:
        low, high = int(pixels.min()), int(pixels.max())
        if high - low < _MAX_TABLE:
            domain = np.arange(low, high + 1, dtype=pixels.dtype)
            offsets = pixels.astype(np.int32) - low if low else pixels
            present = None
            if "ModalityLUTSequence" in lut_ds:  # not monotonic: min/max over present values
                present = np.bincount(offsets.ravel(), minlength=domain.size) > 0
            table = _voi(apply_modality_lut(domain, lut_ds), lut_ds, window, present)
            return table[offsets]
    return _voi(apply_modality_lut(pixels, lut_ds), lut_ds, window, None)


#: Frames smaller than this are mapped directly (a table would be larger than the frame).
_TABLE_WORTHWHILE = 1 << 14
#: The widest stored value range mapped through a table.
_MAX_TABLE = 1 << 17


def _voi(
    values: np.ndarray, lut_ds: Dataset, window: Window | None, present: np.ndarray | None
) -> np.ndarray:
    """Modality values to 0..255 by the request's window, else the object's VOI, else the
    min/max of the values (of those ``present`` when ``values`` is a table's domain)."""
    if window is not None:
        return linear_window(values, float(window[0]), float(window[1]))
    own = _object_window(lut_ds)
    if own is not None:
        center, width, function = own
        if function == "LINEAR_EXACT":
            y = np.clip((values - center) / width + 0.5, 0.0, 1.0) * 255.0
            return np.rint(y).astype(np.uint8)
        if function == "SIGMOID":
            y = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
            return np.rint(y).astype(np.uint8)
        return linear_window(values, center, width)
    if "VOILUTSequence" in lut_ds:
        item = lut_ds.VOILUTSequence[0]
        descriptor = item.LUTDescriptor
        bits = int(descriptor[2]) if len(descriptor) > 2 else 16
        out = apply_voi(values, lut_ds, index=0).astype(np.float64)
        return np.rint(np.clip(out, 0, 2**bits - 1) * (255.0 / (2**bits - 1))).astype(np.uint8)
    seen = values if present is None else values[present]
    low, high = float(np.min(seen)), float(np.max(seen))
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    y = np.clip((values.astype(np.float64) - low) * (255.0 / (high - low)), 0.0, 255.0)
    return np.rint(y).astype(np.uint8)


def _object_window(ds: Dataset) -> tuple[float, float, str] | None:
    """The first Window Center / Width pair (with its VOI LUT Function), if usable."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    center, width = _first(center), _first(width)
    function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
    try:
        c, w = float(center), float(width)
    except (TypeError, ValueError):
        return None
    minimum = 0.0 if function in ("LINEAR_EXACT", "SIGMOID") else 1.0
    if not (np.isfinite(c) and np.isfinite(w)) or w <= minimum:
        return None
    return c, w, function


def _first(value: Any) -> Any:
    try:
        return value[0] if not isinstance(value, str | bytes) else value
    except (TypeError, IndexError):
        return value


def _frame_view(header: Dataset, image_pixel: Dataset, index: int) -> Dataset:
    """The elements that transform frame ``index``: group 0028, with rescale and window
    taken from the Enhanced objects' per-frame or shared functional groups when present."""
    ds = Dataset()
    ds.update(image_pixel)
    ds.file_meta = image_pixel.file_meta  # the stored encoding of raw LUT data
    ds.set_original_encoding(*image_pixel.original_encoding[:2])
    if "Modality" in header:
        ds.Modality = header.Modality
    for group_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = header.get(group_keyword)
        if not groups:
            continue
        item = groups[0] if group_keyword.startswith("Shared") else _item(groups, index)
        if item is None:
            continue
        for macro in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            if macro in item and item[macro].value:
                ds.update(item[macro].value[0])
    return ds


def _item(sequence: Any, index: int) -> Dataset | None:
    return sequence[index] if index < len(sequence) else None


def _to_8_bits(pixels: np.ndarray, bits: int) -> np.ndarray:
    if pixels.dtype == np.uint8 and bits <= 8:
        return pixels
    shift = max(bits - 8, 0)
    return np.clip(pixels.astype(np.int64) >> shift, 0, 255).astype(np.uint8)
