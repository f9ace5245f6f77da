"""Thumbnails of JPEG 2000 objects decoded at a lower resolution (``render/reduced.py``):
the stored value range kept exactly, the picture the full decode gives, and the full decode
wherever the reduced one does not apply."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000Lossless

from mimic_server.render import rendered as rendered_module
from mimic_server.render import thumbnail
from mimic_server.render.reduced import decode_reduced, reduce_for, stored_values
from tests.render_samples import dataset, png_pixels, stored


@pytest.mark.parametrize("name", ["693_J2KR.dcm", "MR_small_jp2klossless.dcm"])
def test_pillows_widening_is_undone_exactly(name: str) -> None:
    """Pillow's full decode, unwidened, is pydicom's stored pixel values (signed 14-bit CT,
    unsigned MR): what the reduced decode relies on."""
    from openjpeg.utils import get_parameters

    ds = dataset(name)
    codestream = next(generate_frames(ds.PixelData))
    params = get_parameters(codestream)
    picture = Image.open(io.BytesIO(codestream))
    picture.load()
    container = 8 if picture.mode == "L" else 16
    values = stored_values(np.asarray(picture), container, int(params["precision"]),
                           bool(params["is_signed"]))
    assert np.array_equal(values, ds.pixel_array)


def test_reduced_decode_is_the_frame_at_a_quarter_size() -> None:
    ds = dataset("693_J2KR.dcm")
    full = ds.pixel_array.astype(np.float64)
    small = decode_reduced(JPEG2000Lossless, next(generate_frames(ds.PixelData)), 2)
    assert small is not None and small.shape == (128, 128) and small.dtype == np.int16
    block_means = full.reshape(128, 4, 128, 4).mean(axis=(1, 3))
    assert np.abs(small - block_means).mean() < 0.02 * (full.max() - full.min())


def test_thumbnail_from_the_reduced_decode_looks_like_the_full_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fast = png_pixels(thumbnail(stored("693_J2KR.dcm"), media_type="image/png"))
    monkeypatch.setattr(rendered_module, "reduce_for", lambda *args: 0)
    whole = png_pixels(thumbnail(stored("693_J2KR.dcm"), media_type="image/png"))
    assert fast.shape == whole.shape == (128, 128)
    difference = fast.astype(int) - whole.astype(int)
    # The wavelet's low-pass band and a bicubic shrink differ at sharp edges, which this CT's
    # narrow window (40 / 100) magnifies; elsewhere they agree, with no shift in contrast.
    assert np.median(np.abs(difference)) <= 1 and abs(difference.mean()) < 2
    assert np.abs(difference).mean() < 10  # of 255 grey levels


def test_colour_and_other_syntaxes_take_the_full_decode() -> None:
    colour = dataset("US1_J2KR.dcm")
    frame = next(generate_frames(colour.PixelData, number_of_frames=1))
    assert decode_reduced(JPEG2000Lossless, frame, 2) is None
    assert decode_reduced(JPEG2000Lossless, b"not a codestream", 2) is None
    picture = Image.open(io.BytesIO(thumbnail(stored("US1_J2KR.dcm"), media_type="image/png")))
    assert picture.mode == "RGB" and max(picture.size) == 128


@pytest.mark.parametrize(("rows", "columns", "bounds", "expected"), [
    (512, 512, (128, 128), 2), (512, 512, (256, 256), 1), (512, 512, (300, 300), 0),
    (3000, 2000, (128, 128), 4), (100, 100, (128, 128), 0), (512, 256, (128, 128), 2),
])
def test_how_far_to_reduce(rows: int, columns: int, bounds: tuple[int, int],
                           expected: int) -> None:
    assert reduce_for(rows, columns, bounds) == expected
