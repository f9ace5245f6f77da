"""Rendered frames and thumbnails decoded by Pillow and compared with pydicom's pixel data
after the same modality LUT and window (PS3.3 C.11.2.1.2), computed here on their own."""

from __future__ import annotations

import io
import struct

import numpy as np
import openjpeg
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_windowing, pixel_array
from pydicom.pixels.decoders.base import Decoder
from pydicom.pixels.processing import apply_color_lut

from mimic_server.render import (
    CorruptPixelData,
    FrameNotFound,
    InvalidFrameNumber,
    InvalidRenderParameters,
    NoPixelData,
    NotRenderable,
    UnsupportedTransferSyntax,
    frames,
    render,
    segmented,
    thumbnail,
)
from tests.render_samples import dataset, image, part10, path, png_pixels, stored


def window_linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out branch by branch as the standard does."""
    x = values.astype(np.float64)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    middle = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    out = np.where(x <= low, 0.0, np.where(x > high, 255.0, middle))
    return np.rint(out).astype(np.uint8)


def min_max(values: np.ndarray) -> np.ndarray:
    x = values.astype(np.float64)
    return np.rint((x - x.min()) * 255 / (x.max() - x.min())).astype(np.uint8)


def modality(name: str, index: int | None = None) -> tuple[Dataset, np.ndarray]:
    ds = dataset(name)
    arr = pixel_array(str(path(name)), index=index)
    return ds, apply_modality_lut(arr, ds)


def test_png_without_a_window_spreads_min_to_max() -> None:
    _, values = modality("CT_small.dcm")  # no Window Center / Width in the object
    got = png_pixels(render(stored("CT_small.dcm"), media_type="image/png"))
    assert got.dtype == np.uint8 and got.shape == (128, 128)
    assert np.array_equal(got, min_max(values))


def test_png_uses_the_objects_first_window() -> None:
    ds, values = modality("MR_small.dcm")
    assert (ds.WindowCenter, ds.WindowWidth) == (600, 1600)
    got = png_pixels(render(stored("MR_small.dcm"), media_type="image/png"))
    assert np.array_equal(got, window_linear(values, 600, 1600))


def test_png_matches_pydicoms_windowing_within_rounding() -> None:
    ds, values = modality("693_UNCR.dcm")  # CT, rescale -1024, window 40 / 100
    theirs = apply_windowing(values.astype(np.float64), ds)
    # pydicom windows onto the stored value range carried through the rescale; scale to 8 bits
    bits = int(ds.BitsStored)
    low = -(2 ** (bits - 1)) if ds.PixelRepresentation else 0
    low = low * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    scaled = (theirs - low) * 255 / ((2**bits - 1) * float(ds.RescaleSlope))
    got = png_pixels(render(stored("693_UNCR.dcm"), media_type="image/png"))
    assert np.abs(got.astype(float) - scaled).max() <= 1.0


def test_the_requested_window_overrides_the_objects() -> None:
    _, values = modality("MR_small.dcm")
    got = png_pixels(render(stored("MR_small.dcm"), media_type="image/png", window=(200, 300)))
    assert np.array_equal(got, window_linear(values, 200, 300))
    assert not np.array_equal(got, window_linear(values, 600, 1600))


def test_rescale_comes_before_the_window() -> None:
    _, values = modality("CT_small.dcm")  # rescale intercept -1024: window in HU
    got = png_pixels(render(stored("CT_small.dcm"), media_type="image/png", window=(40, 400)))
    assert np.array_equal(got, window_linear(values, 40, 400))


def test_monochrome1_is_inverted() -> None:
    ds, values = modality("RG3_UNCR.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    got = png_pixels(render(stored("RG3_UNCR.dcm"), media_type="image/png"))
    assert np.array_equal(got, 255 - window_linear(values, 550, 1024))


def test_monochrome1_and_2_of_the_same_pixels_are_negatives() -> None:
    ds = dataset("MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = png_pixels(render(part10(ds), media_type="image/png"))
    plain = png_pixels(render(stored("MR_small.dcm"), media_type="image/png"))
    assert np.array_equal(inverted, 255 - plain)


def test_multiframe_renders_the_frame_asked_for() -> None:
    _, values = modality("emri_small.dcm", index=6)
    got = png_pixels(render(stored("emri_small.dcm"), 7, media_type="image/png"))
    assert np.array_equal(got, min_max(values))
    first = png_pixels(render(stored("emri_small.dcm"), 1, media_type="image/png"))
    assert not np.array_equal(got, first)


@pytest.mark.parametrize(
    "name",
    [
        "emri_small_big_endian.dcm",
        "emri_small_RLE.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
    ],
)
@pytest.mark.parametrize("number", [1, 4, 10])
def test_lossless_syntaxes_render_the_same_pixels(name: str, number: int) -> None:
    want = png_pixels(render(stored("emri_small.dcm"), number, media_type="image/png"))
    got = png_pixels(render(stored(name), number, media_type="image/png"))
    assert np.array_equal(got, want)


def test_jpeg_2000_of_a_ct_renders_as_the_uncompressed_original() -> None:
    want = png_pixels(render(stored("693_UNCR.dcm"), media_type="image/png"))
    got = png_pixels(render(stored("693_J2KR.dcm"), media_type="image/png"))
    assert np.array_equal(got, want)


def test_jpeg_lossless_process_14() -> None:
    ds = dataset("JPGLosslessP14SV1_1s_1f_8b.dcm")
    values = pixel_array(str(path("JPGLosslessP14SV1_1s_1f_8b.dcm")))
    got = png_pixels(render(stored("JPGLosslessP14SV1_1s_1f_8b.dcm"), media_type="image/png"))
    assert np.array_equal(got, window_linear(values, ds.WindowCenter, ds.WindowWidth))


def test_jpeg_baseline_ybr_multiframe_is_rgb_of_the_right_frame() -> None:
    want = pixel_array(str(path("examples_ybr_color.dcm")), index=4)  # YBR -> RGB by pydicom
    got = png_pixels(render(stored("examples_ybr_color.dcm"), 5, media_type="image/png"))
    assert got.shape == (240, 320, 3)
    assert np.array_equal(got, want)


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
        "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline, YBR_FULL_422
        "SC_ybr_full_uncompressed.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "SC_rgb_rle.dcm",
        "SC_rgb_gdcm_KY.dcm",  # JPEG 2000
        "SC_rgb_expb.dcm",
    ],
)
def test_colour_encodings_render_close_to_the_rgb_original(name: str) -> None:
    original = pixel_array(str(path("SC_rgb.dcm")))
    got = png_pixels(render(stored(name), media_type="image/png"))
    assert got.shape == original.shape
    assert np.abs(got.astype(int) - original.astype(int)).mean() < 3


def test_16_bit_rgb_is_scaled_to_8_bits() -> None:
    original = pixel_array(str(path("SC_rgb_16bit.dcm")))
    got = png_pixels(render(stored("SC_rgb_16bit.dcm"), media_type="image/png"))
    assert np.array_equal(got, (original >> 8).astype(np.uint8))


def test_planar_configuration_does_not_change_the_picture() -> None:
    by_pixel = png_pixels(render(stored("color-px.dcm"), media_type="image/png"))
    by_plane = png_pixels(render(stored("color-pl.dcm"), media_type="image/png"))
    assert np.array_equal(by_pixel, by_plane)


def test_palette_colour_goes_through_its_lookup_tables() -> None:
    from pydicom.pixels import apply_color_lut

    ds = dataset("OBXXXX1A.dcm")
    want = apply_color_lut(pixel_array(str(path("OBXXXX1A.dcm"))), ds)
    got = png_pixels(render(stored("OBXXXX1A.dcm"), media_type="image/png"))
    assert np.array_equal(got, (want >> 8).astype(np.uint8) if want.dtype != np.uint8 else want)


def test_jpeg_output_is_close_to_the_png() -> None:
    png = png_pixels(render(stored("693_UNCR.dcm"), media_type="image/png"))
    jpeg = png_pixels(render(stored("693_UNCR.dcm"), media_type="image/jpeg", quality=95))
    assert jpeg.shape == png.shape
    assert np.abs(jpeg.astype(int) - png.astype(int)).mean() < 2
    small = render(stored("693_UNCR.dcm"), media_type="image/jpeg", quality=20)
    assert len(small) < len(render(stored("693_UNCR.dcm"), media_type="image/jpeg", quality=95))


def test_jpeg_is_the_default_media_type() -> None:
    assert render(stored("CT_small.dcm"))[:3] == b"\xff\xd8\xff"
    assert render(stored("CT_small.dcm"), media_type="image/png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_viewport_fits_inside_keeping_the_aspect_ratio() -> None:
    us = stored("US1_UNCR.dcm")  # 640 x 480
    assert png_pixels(render(us, media_type="image/png", viewport=(320, 320))).shape == (
        240,
        320,
        3,
    )
    ct = stored("CT_small.dcm")  # 128 x 128
    assert png_pixels(render(ct, media_type="image/png", viewport=(256, 64))).shape == (64, 64)
    assert png_pixels(render(ct, media_type="image/png", viewport=(512, 512))).shape == (
        512,
        512,
    )


def test_thumbnail_is_the_middle_frame_shrunk_never_enlarged() -> None:
    whole = render(stored("emri_small.dcm"), 5, media_type="image/png")
    thumb = thumbnail(stored("emri_small.dcm"), (64, 64), "image/png")  # 10 frames: 5th
    assert np.array_equal(png_pixels(thumb), png_pixels(whole))
    assert png_pixels(thumbnail(stored("US1_UNCR.dcm"), media_type="image/png")).shape == (
        96,
        128,
        3,
    )
    assert png_pixels(thumbnail(stored("CT_small.dcm"), (512, 512))).shape == (128, 128)
    assert thumbnail(stored("CT_small.dcm"))[:3] == b"\xff\xd8\xff"


def test_one_bit_segmentation_renders() -> None:
    got = png_pixels(render(stored("liver.dcm"), 2, media_type="image/png"))
    want = pixel_array(str(path("liver.dcm")), index=1)
    assert np.array_equal(got, want.astype(np.uint8) * 255)


def test_a_file_object_renders_as_bytes_do() -> None:
    with path("emri_small_RLE.dcm").open("rb") as fh:
        assert render(fh, 3, media_type="image/png") == render(
            stored("emri_small_RLE.dcm"), 3, media_type="image/png"
        )


# Refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(("number", "error"), [(0, InvalidFrameNumber), (11, FrameNotFound)])
def test_frames_outside_the_object_are_refused(number: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        render(stored("emri_small.dcm"), number)


def test_no_pixel_data_is_refused() -> None:
    with pytest.raises(NoPixelData):
        render(part10(image()))
    with pytest.raises(NoPixelData):
        thumbnail(part10(image()))


def test_pixel_data_the_decoder_rejects_is_corrupt() -> None:
    # pydicom's JPEG-lossy.dcm: a malformed JPEG Extended scan header no plugin accepts.
    with pytest.raises(CorruptPixelData) as caught:
        render(stored("JPEG-lossy.dcm"))
    assert caught.value.http_status == 500


def test_a_syntax_without_a_decoder_is_refused() -> None:
    # JPEG 2000 Part 2: frames can be served, but no installed plugin decodes them.
    ds = image("1.2.840.10008.1.2.4.92", encapsulated_frames=[b"\xff\x4f\xff\x51" + bytes(60)])
    with pytest.raises(UnsupportedTransferSyntax) as caught:
        render(part10(ds))
    assert caught.value.http_status == 406


@pytest.mark.parametrize(
    "options",
    [
        {"media_type": "image/gif"},
        {"window": (40, 0)},
        {"window": (float("nan"), 400)},
        {"viewport": (0, 10)},
        {"viewport": (10, 100_000)},
        {"quality": 0},
        {"quality": 101},
    ],
)
def test_parameters_that_cannot_be_honoured_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(InvalidRenderParameters) as caught:
        render(stored("CT_small.dcm"), **options)  # type: ignore[arg-type]
    assert caught.value.http_status == 400


def test_a_modality_lut_sequence_maps_before_the_window() -> None:
    ds, values = modality("mlut_18.dcm")  # 512 x 512, Modality LUT Sequence, no window
    assert "ModalityLUTSequence" in ds
    got = png_pixels(render(stored("mlut_18.dcm"), media_type="image/png"))
    assert np.array_equal(got, min_max(values))


def test_small_and_large_frames_present_alike() -> None:
    # 512 x 512 goes through a lookup table, 64 x 64 is mapped directly: same numbers.
    ds, values = modality("693_UNCR.dcm")
    got = png_pixels(render(stored("693_UNCR.dcm"), media_type="image/png", window=(40, 400)))
    assert np.array_equal(got, window_linear(values, 40, 400))
    ds.PixelData = ds.pixel_array[:64, :64].tobytes()
    ds.Rows = ds.Columns = 64
    small = png_pixels(render(part10(ds), media_type="image/png", window=(40, 400)))
    assert np.array_equal(small, got[:64, :64])


def test_enhanced_ct_takes_rescale_and_window_from_shared_functional_groups() -> None:
    ds = dataset("eCT_Supplemental.dcm")  # 2 frames; rescale and window only in the groups
    assert "RescaleIntercept" not in ds and "WindowCenter" not in ds
    values = pixel_array(str(path("eCT_Supplemental.dcm")), index=1).astype(float) - 1024
    got = png_pixels(render(stored("eCT_Supplemental.dcm"), 2, media_type="image/png"))
    assert np.array_equal(got, window_linear(values, 49, 102))


def test_a_per_frame_window_overrides_the_shared_one() -> None:
    from pydicom.dataset import Dataset as Item
    from pydicom.sequence import Sequence

    ds = dataset("eCT_Supplemental.dcm")
    voi = Item()
    voi.WindowCenter, voi.WindowWidth = 300, 1500
    ds.PerFrameFunctionalGroupsSequence[1].FrameVOILUTSequence = Sequence([voi])
    values = pixel_array(str(path("eCT_Supplemental.dcm")), index=1).astype(float) - 1024
    data = part10(ds)
    second = png_pixels(render(data, 2, media_type="image/png"))
    assert np.array_equal(second, window_linear(values, 300, 1500))
    first_values = pixel_array(str(path("eCT_Supplemental.dcm")), index=0).astype(float) - 1024
    first = png_pixels(render(data, 1, media_type="image/png"))
    assert np.array_equal(first, window_linear(first_values, 49, 102))


@pytest.mark.parametrize(
    "name",
    [
        "JPGExtended.dcm",  # JPEG Extended, 12 bits
        "JPEGLSNearLossless_16.dcm",
        "JPEG2000.dcm",  # JPEG 2000 (lossy syntax), signed
        "MR2_J2KI.dcm",  # JPEG 2000 lossy, rescale and window
        "J2K_pixelrep_mismatch.dcm",
        "rtdose.dcm",  # 32 bits allocated, 15 frames
        "vlut_04.dcm",  # VOI LUT Sequence
        "693_J2KI.dcm",
    ],
)
def test_grayscale_samples_render_as_pydicom_decodes_them(name: str) -> None:
    ds = dataset(name)
    arr = pixel_array(str(path(name)), index=0 if "NumberOfFrames" in ds else None)
    values = apply_modality_lut(arr, ds)
    if "WindowCenter" in ds:
        center = ds.WindowCenter if ds["WindowCenter"].VM == 1 else ds.WindowCenter[0]
        width = ds.WindowWidth if ds["WindowWidth"].VM == 1 else ds.WindowWidth[0]
        want = window_linear(values, float(center), float(width))
    elif "VOILUTSequence" in ds:
        from pydicom.pixels import apply_voi

        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        voi = apply_voi(values, ds).astype(float)
        want = np.rint(voi * 255 / (2**bits - 1)).astype(np.uint8)
    else:
        want = min_max(values)
    got = png_pixels(render(stored(name), media_type="image/png"))
    assert np.array_equal(got, want)


def test_32_bit_rgb_is_scaled_to_8_bits() -> None:
    original = pixel_array(str(path("SC_rgb_32bit.dcm")))
    got = png_pixels(render(stored("SC_rgb_rle_32bit.dcm"), media_type="image/png"))
    assert np.array_equal(got, (original >> 24).astype(np.uint8))


def test_a_header_claiming_a_huge_frame_is_refused_before_decoding() -> None:
    ds = image("1.2.840.10008.1.2.4.90", rows=65535, columns=65535, encapsulated_frames=[b"xy"])
    ds.SamplesPerPixel = 3
    with pytest.raises(NotRenderable):
        render(part10(ds))
    assert frames(part10(ds), [1])[0].data == b"xy"  # the stored frame is still served


def _declaring(codestream: bytes, marker: bytes, at: int, fmt: str, side: int) -> bytes:
    """``codestream`` with the size its frame header (``marker``) declares set to side x
    side, ``at`` bytes after the marker."""
    out = bytearray(codestream)
    index = out.index(marker)
    struct.pack_into(fmt, out, index + at, side, side)
    return bytes(out)


def _jpeg_baseline() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(out, "JPEG")
    return out.getvalue()


def _oversized_frames() -> list[tuple[str, int, bytes]]:
    """(syntax, bits, frame) whose codestream declares 30000 x 30000 over 64 x 64 pixels."""
    j2k = openjpeg.encode(np.zeros((64, 64), np.uint8), bits_stored=8)
    jls = frames(stored("emri_small_jpeg_ls_lossless.dcm"), [1])[0].data
    return [
        ("1.2.840.10008.1.2.4.50", 8, _declaring(_jpeg_baseline(), b"\xff\xc0", 5, ">HH", 30000)),
        ("1.2.840.10008.1.2.4.80", 16, _declaring(jls, b"\xff\xf7", 5, ">HH", 30000)),
        # SIZ: Xsiz, Ysiz, then (after the offsets) the tile's XTsiz, YTsiz.
        ("1.2.840.10008.1.2.4.90", 8, _declaring(
            _declaring(j2k, b"\xff\x51", 6, ">II", 30000), b"\xff\x51", 22, ">II", 30000)),
    ]


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every decode asked for (none is made: each fails the test)."""
    asked: list[str] = []

    def no_decode(*args: object, **kwargs: object) -> None:
        asked.append("decoded")
        raise AssertionError("decoded")

    monkeypatch.setattr(Decoder, "as_array", no_decode)
    monkeypatch.setattr("mimic_server.render.decode.decode_reduced", no_decode)
    return asked


@pytest.mark.parametrize("call", ["render", "thumbnail"])
@pytest.mark.parametrize(("syntax", "bits", "frame"), _oversized_frames())
def test_a_codestream_declaring_another_size_than_the_header_is_refused_before_decoding(
    decodes: list[str], call: str, syntax: str, bits: int, frame: bytes,
) -> None:
    # The decoders allocate what the codestream declares: 1 KB declaring 30000 x 30000
    # cost 26 s and 4.3 GiB before the size mismatch was noticed.
    data = part10(image(syntax, rows=64, columns=64, bits=bits, encapsulated_frames=[frame]))
    with pytest.raises(CorruptPixelData) as caught:
        render(data) if call == "render" else thumbnail(data, (16, 16))
    assert "30000" in str(caught.value)
    assert caught.value.http_status == 500
    assert decodes == []
    assert frames(data, [1])[0].data.startswith(frame)  # still served as stored (padded)


@pytest.mark.parametrize("marker", [0xDE, 0xDF, 0xC5, 0xCD])  # DHP, EXP, differential SOFs
def test_a_hierarchical_jpeg_is_refused_before_decoding(decodes: list[str],
                                                       marker: int) -> None:
    """T.81 Annex J: a DHP declares the image's size before a first SOF that agrees with the
    header, and the decoder grows the frame to the DHP's size (16384 x 16384 over a 64 x 64
    header: 1.7 GiB before the mismatch showed). No DICOM JPEG syntax is hierarchical."""
    baseline = _jpeg_baseline()
    segment = bytes([0xFF, marker]) + struct.pack(">HBHHB", 8, 8, 16384, 16384, 1)
    frame = baseline[:2] + segment + baseline[2:]  # before the baseline's own SOF
    data = part10(image("1.2.840.10008.1.2.4.50", rows=64, columns=64, bits=8,
                        encapsulated_frames=[frame]))
    with pytest.raises(CorruptPixelData):
        render(data)
    assert decodes == []


@pytest.mark.parametrize("keyword,value", [("Columns", 0), ("Rows", None)])
def test_a_thumbnail_without_usable_rows_and_columns_is_corrupt(keyword: str,
                                                                value: int | None) -> None:
    # The reduction was computed from them before they were checked: ZeroDivisionError,
    # AttributeError, answered as a bug.
    ds = image(rows=16, columns=16, pixel_data=bytes(256))
    if value is None:
        delattr(ds, keyword)
    else:
        setattr(ds, keyword, value)
    for call in (thumbnail, render):
        with pytest.raises(CorruptPixelData) as caught:
            call(part10(ds))
        assert caught.value.http_status == 500


def test_a_big_endian_segmented_palette_is_read_in_its_own_byte_order() -> None:
    little = render(stored("gdcm-US-ALOKA-16.dcm"), media_type="image/png")
    assert render(stored("gdcm-US-ALOKA-16_big.dcm"), media_type="image/png") == little


def test_lookup_tables_that_cannot_be_applied_are_not_renderable() -> None:
    ds = dataset("OBXXXX1A.dcm")
    del ds.GreenPaletteColorLookupTableData  # a palette without its green table
    with pytest.raises(NotRenderable) as caught:
        render(part10(ds))
    assert caught.value.http_status == 406


def _segmented_palette(words: list[int], entries: int = 256) -> bytes:
    ds = image(rows=16, columns=16, bits=8, pixel_data=bytes(range(256)))
    ds.PhotometricInterpretation = "PALETTE COLOR"
    for channel in ("Red", "Green", "Blue"):
        setattr(ds, f"{channel}PaletteColorLookupTableDescriptor", [entries, 0, 16])
        setattr(ds, f"Segmented{channel}PaletteColorLookupTableData",
                struct.pack(f"<{len(words)}H", *words))
        ds[f"Segmented{channel}PaletteColorLookupTableData"].VR = "OW"
    return part10(ds)


def _nested_indirect(levels: int) -> list[int]:
    """Each level's two indirect segments expand the next level's three segments (PS3.3
    C.7.9.2.3; offsets as pydicom reads them): the table doubles with every level, 194
    bytes of it took pydicom 69 s and 5.3 GiB."""
    words: list[int] = []
    for _ in range(levels):
        words += [0, 1, 5, 2, 3, 11, 0, 2, 3, 11, 0]
    return [*words, 0, 1, 5, 1, 65535, 5, 1, 65535, 5]


@pytest.mark.parametrize(
    "words",
    [
        _nested_indirect(3),
        [0, 1, 5, 2, 2, 0, 0],  # an indirect segment that expands itself: RecursionError
    ],
)
def test_a_segmented_palette_with_indirect_segments_is_not_renderable(
    words: list[int],
) -> None:
    with pytest.raises(NotRenderable) as caught:
        render(_segmented_palette(words))
    assert caught.value.http_status == 406
    with pytest.raises(NotRenderable):
        thumbnail(_segmented_palette(words))


def test_a_segmented_palette_is_expanded_no_further_than_its_entries() -> None:
    # 4 entries of discrete data, then linear segments of 65,535 entries each: 8 bytes of
    # LUT data worth 128 KiB of table apiece; only the descriptor's 256 entries are made.
    words = [0, 4, 0, 100, 200, 300] + [1, 65535, 65535, 1, 65535, 0] * 200
    expanded = segmented.expand(words, 256)
    assert len(expanded) == 256
    assert list(expanded[:4]) == [0, 100, 200, 300]
    ds = dataset("gdcm-US-ALOKA-16.dcm")  # a shipped segmented palette, as pydicom maps it
    values = pixel_array(str(path("gdcm-US-ALOKA-16.dcm")))
    assert np.array_equal(segmented.apply_segmented_palette(values, ds),
                          apply_color_lut(values, ds))


@pytest.mark.parametrize(
    "options", [{"size": (0, 128)}, {"media_type": "image/webp"}, {"quality": 0}]
)
def test_thumbnail_parameters_that_cannot_be_honoured_are_refused(
    options: dict[str, object],
) -> None:
    with pytest.raises(InvalidRenderParameters):
        thumbnail(stored("CT_small.dcm"), **options)  # type: ignore[arg-type]
