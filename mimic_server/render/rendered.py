"""WADO-RS rendered resources and thumbnails (PS3.18), as PNG or JPEG.

A rendered frame is the presentation of one frame (``presentation.py``) encoded by Pillow.
Only the requested frame is read and decoded; the header is read up to the Pixel Data.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mimic_server.render.decode import check_size, decode_frame
from mimic_server.render.media_types import JPEG, PNG, RENDERED_MEDIA_TYPES
from mimic_server.render.presentation import Window, check_window, display_pixels
from mimic_server.render.reduced import reduce_for
from mimic_server.render.refusals import InvalidRenderParameters, NotRenderable, RenderError
from mimic_server.render.stored import Part10, StoredImage, open_image

#: Default JPEG quality (PS3.18 lets the server choose when the request says nothing).
DEFAULT_QUALITY = 90
DEFAULT_THUMBNAIL_SIZE = (128, 128)
#: The largest viewport side honoured: a bound on the memory one request may make us use.
MAX_VIEWPORT = 4096


def render(
    part10: Part10,
    frame: int = 1,
    *,
    media_type: str = JPEG,
    window: Window | None = None,
    viewport: tuple[int, int] | None = None,
    quality: int | None = None,
) -> bytes:
    """Frame ``frame`` (1-based) of a stored image as an ``image/png`` or ``image/jpeg`` body.

    ``window`` (center, width) in modality units replaces the object's VOI (PS3.18
    ``window=center,width,function``; the linear function); without it the object's first
    window, else its VOI LUT, else the frame's min/max. ``viewport`` (width, height) scales
    the image to fit inside it with its aspect ratio kept (PS3.18 ``viewport=vw,vh``).
    ``quality`` 1..100 applies to JPEG (default 90). MONOCHROME1 is inverted, YBR converted
    to RGB: the result always reads as MONOCHROME2 or RGB.

    Raises (``refusals``): ``InvalidFrameNumber`` / ``InvalidRenderParameters`` (400),
    ``FrameNotFound`` / ``NoPixelData`` (404), ``NotRenderable`` /
    ``UnsupportedTransferSyntax`` (406), ``CorruptPixelData`` (500)."""
    _check_media_type(media_type)
    if window is not None:
        check_window(window)
    size = _check_viewport(viewport) if viewport is not None else None
    _check_quality(quality)
    picture = _picture(part10, frame, window)
    if size is not None:
        picture = _fit(picture, size, allow_larger=True)
    return _encode(picture, media_type, quality)


def thumbnail(
    part10: Part10,
    size: tuple[int, int] = DEFAULT_THUMBNAIL_SIZE,
    media_type: str = JPEG,
    *,
    quality: int | None = None,
) -> bytes:
    """The middle frame, shrunk to fit inside ``size`` with its aspect ratio kept (never
    enlarged), with the object's own window: what a study list shows beside each series.

    Same refusals as ``render``."""
    _check_media_type(media_type)
    bounds = _check_viewport(size)
    _check_quality(quality)
    image = open_image(part10)
    middle = (image.number_of_frames + 1) // 2
    check_size(image)  # Rows / Columns usable before the reduction is computed from them
    reduce = reduce_for(int(image.header.Rows), int(image.header.Columns), bounds)
    picture = _present(image, middle, None, reduce)
    return _encode(_fit(picture, bounds, allow_larger=False), media_type, quality)


def _picture(part10: Part10, number: int, window: Window | None) -> Image.Image:
    image = open_image(part10)
    image.check_frame_number(number)
    return _present(image, number, window)


def _present(image: StoredImage, number: int, window: Window | None,
             reduce: int = 0) -> Image.Image:
    decoded = decode_frame(image, number, reduce)
    try:
        pixels = display_pixels(decoded, image.header, number - 1, window)
    except RenderError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, ArithmeticError,
            RecursionError) as exc:
        # A lookup table pydicom cannot apply (a malformed segmented palette, a LUT
        # descriptor that does not fit its data, a zero or overflowing value it divides or
        # widens by): the object is as received, we cannot show it.
        raise NotRenderable(f"the object's lookup tables cannot be applied: {exc}") from exc
    return Image.fromarray(np.ascontiguousarray(pixels), "L" if pixels.ndim == 2 else "RGB")


def _fit(picture: Image.Image, bounds: tuple[int, int], *, allow_larger: bool) -> Image.Image:
    width, height = picture.size
    scale = min(bounds[0] / width, bounds[1] / height)
    if scale >= 1 and not allow_larger:
        return picture
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if target == picture.size:
        return picture
    return picture.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)


def _encode(picture: Image.Image, media_type: str, quality: int | None) -> bytes:
    out = io.BytesIO()
    if media_type == PNG:
        # Level 1: the size gain of higher levels is small for medical images, the time is not.
        picture.save(out, "PNG", compress_level=1)
    else:
        picture.save(out, "JPEG", quality=quality or DEFAULT_QUALITY)
    return out.getvalue()


def _check_media_type(media_type: str) -> None:
    if media_type not in RENDERED_MEDIA_TYPES:
        raise InvalidRenderParameters(
            f"rendered media types are {', '.join(RENDERED_MEDIA_TYPES)}, not {media_type!r}"
        )


def _check_viewport(viewport: tuple[int, int]) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in viewport)
    except (TypeError, ValueError) as exc:
        raise InvalidRenderParameters("a viewport is (width, height)") from exc
    if not (0 < width <= MAX_VIEWPORT and 0 < height <= MAX_VIEWPORT):
        raise InvalidRenderParameters(f"viewport sides must be 1..{MAX_VIEWPORT}")
    return width, height


def _check_quality(quality: int | None) -> None:
    if quality is not None and (isinstance(quality, bool) or not 1 <= int(quality) <= 100):
        raise InvalidRenderParameters("quality must be 1..100")
