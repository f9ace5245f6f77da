"""WADO-RS frames from stored bytes: native slices, encapsulated frames as stored, refusals."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels.utils import pack_bits

from mimic_server.render import (
    CorruptPixelData,
    FrameNotFound,
    InvalidFrameNumber,
    NoPixelData,
    NotRenderable,
    UnsupportedTransferSyntax,
    frames,
)
from tests.render_samples import dataset, image, part10, path, stored


def test_single_frame_native_is_the_whole_pixel_data() -> None:
    (frame,) = frames(stored("CT_small.dcm"), [1])
    assert frame.data == dataset("CT_small.dcm").PixelData
    assert frame.media_type == "application/octet-stream"
    assert frame.content_type == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"


def test_native_multiframe_gives_each_frame_slice_in_the_order_asked() -> None:
    ds = dataset("emri_small.dcm")  # 10 frames of 64 x 64 x 16 bits
    size = 64 * 64 * 2
    got = frames(stored("emri_small.dcm"), [3, 1, 10, 3])
    want = [ds.PixelData[(n - 1) * size : n * size] for n in (3, 1, 10, 3)]
    assert [f.data for f in got] == want


def test_implicit_vr_frames_are_found_too() -> None:
    (frame,) = frames(stored("MR_small_implicit.dcm"), [1])
    assert frame.data == dataset("MR_small.dcm").PixelData


def test_big_endian_frames_are_sent_little_endian() -> None:
    little = frames(stored("emri_small.dcm"), [2, 9])
    big = frames(stored("emri_small_big_endian.dcm"), [2, 9])
    assert [f.data for f in big] == [f.data for f in little]
    assert big[0].content_type.endswith("transfer-syntax=1.2.840.10008.1.2.1")


def test_deflated_frames_are_the_inflated_pixels() -> None:
    (frame,) = frames(stored("image_dfl.dcm"), [1])
    assert frame.data == dataset("image_dfl.dcm").PixelData


def test_one_bit_frames_on_byte_boundaries() -> None:
    ds = dataset("liver.dcm")  # 3 frames of 512 x 512 x 1 bit
    got = frames(stored("liver.dcm"), [2])[0].data
    assert got == ds.PixelData[32768 : 2 * 32768]


def test_one_bit_frames_across_byte_boundaries_are_repacked() -> None:
    # 3 x 3 pixels = 9 bits per frame: frame 2 starts at bit 1 of byte 1.
    pixels = np.random.default_rng(7).integers(0, 2, size=(4, 3, 3), dtype=np.uint8)
    ds = image(rows=3, columns=3, frames=4, bits=1, pixel_data=pack_bits(pixels))
    ds.HighBit = 0
    got = frames(part10(ds), [1, 2, 4])
    for frame, number in zip(got, (1, 2, 4), strict=True):
        assert len(frame.data) == 2
        bits = np.unpackbits(np.frombuffer(frame.data, np.uint8), bitorder="little")[:9]
        assert bits.reshape(3, 3).tolist() == pixels[number - 1].tolist()


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("emri_small_RLE.dcm", "image/dicom-rle"),
        ("emri_small_jpeg_2k_lossless.dcm", "image/jp2"),
        ("emri_small_jpeg_ls_lossless.dcm", "image/jls"),
        ("examples_ybr_color.dcm", "image/jpeg"),  # JPEG baseline, 30 frames
        ("JPEG-LL.dcm", "image/jpeg"),
        ("MR_small_RLE.dcm", "image/dicom-rle"),
    ],
)
def test_encapsulated_frames_are_the_stored_bitstreams(name: str, media_type: str) -> None:
    ds = dataset(name)
    count = int(ds.get("NumberOfFrames") or 1)
    numbers = sorted({1, count, (count + 1) // 2})
    got = frames(stored(name), numbers)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    for frame, number in zip(got, numbers, strict=True):
        assert frame.data == get_frame(ds.PixelData, number - 1, number_of_frames=count)
        assert frame.media_type == media_type
        assert frame.content_type == f"{media_type}; transfer-syntax={syntax}"


def test_a_file_object_serves_as_well_as_bytes() -> None:
    with path("emri_small_RLE.dcm").open("rb") as fh:
        from_file = frames(fh, [4])
    assert from_file == frames(stored("emri_small_RLE.dcm"), [4])


class _CountingReader(io.BytesIO):
    """Counts the bytes read, to show that a frame costs its own bytes, not the object's."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


@pytest.mark.parametrize("name", ["emri_small.dcm", "examples_ybr_color.dcm"])
def test_one_frame_reads_the_header_and_that_frame_only(name: str) -> None:
    data = stored(name)
    reader = _CountingReader(data)
    (frame,) = frames(reader, [2])
    pixel_bytes = len(dataset(name).PixelData)
    header = len(data) - pixel_bytes
    # The header, the frame, and item headers: far less than the whole pixel data.
    assert reader.bytes_read < header + len(frame.data) + 4096
    assert reader.bytes_read < pixel_bytes / 4


class _CountingSeeks(io.BytesIO):
    """Counts the seeks: each fragment's item header is one."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.seeks = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        self.seeks += 1
        return super().seek(offset, whence)


def test_frames_without_an_offset_table_are_located_once_per_list() -> None:
    # pydicom's get_frame walked every fragment from the first again for each number:
    # 1,024 numbers of a 100,000-frame object were 100 million item headers (68 s).
    count = 2000
    ds = image("1.2.840.10008.1.2.5", rows=1, columns=1, frames=count,
               encapsulated_frames=[b"\x00\x00"] * count)
    ds.PixelData = encapsulate([i.to_bytes(2, "little") for i in range(count)], has_bot=False)
    reader = _CountingSeeks(part10(ds))
    found = frames(reader, [count, 1, count - 1] * 64)
    assert [f.data for f in found[:3]] == [
        (count - 1).to_bytes(2, "little"), bytes(2), (count - 2).to_bytes(2, "little")]
    assert reader.seeks < 2 * count  # one walk of the item headers, then one seek a frame


@pytest.mark.parametrize("has_bot", [True, False])
def test_frames_of_two_fragments_are_the_frames_pydicom_finds(has_bot: bool) -> None:
    # Without a Basic Offset Table, by the EOI marker ending each frame's last fragment.
    frame_list = [b"\xff\xd8" + bytes([i]) * 10 + b"\xff\xd9" for i in range(3)]
    ds = image("1.2.840.10008.1.2.4.50", frames=3, encapsulated_frames=[b"xx"])
    halves = [half for frame in frame_list for half in (frame[:6], frame[6:])]
    items = [b"\xfe\xff\x00\xe0" + struct.pack("<L", len(h)) + h for h in halves]
    offsets = [sum(len(i) for i in items[: 2 * n]) for n in range(3)] if has_bot else []
    table = struct.pack(f"<{len(offsets)}L", *offsets)
    ds.PixelData = (b"\xfe\xff\x00\xe0" + struct.pack("<L", len(table)) + table
                    + b"".join(items) + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    found = frames(part10(ds), [3, 1, 2])
    assert [f.data for f in found] == [frame_list[2], frame_list[0], frame_list[1]]
    assert [f.data for f in found] == [
        get_frame(ds.PixelData, i, number_of_frames=3) for i in (2, 0, 1)]


# Refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("numbers", [[0], [-1], [], [1, 0]])
def test_frame_numbers_start_at_one(numbers: list[int]) -> None:
    with pytest.raises(InvalidFrameNumber) as caught:
        frames(stored("emri_small.dcm"), numbers)
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    ("name", "numbers"),
    [("emri_small.dcm", [11]), ("CT_small.dcm", [2]), ("emri_small_RLE.dcm", [1, 11])],
)
def test_a_frame_beyond_number_of_frames_is_not_found(name: str, numbers: list[int]) -> None:
    with pytest.raises(FrameNotFound) as caught:
        frames(stored(name), numbers)
    assert caught.value.http_status == 404


def test_an_instance_without_pixel_data_has_no_frames() -> None:
    with pytest.raises(NoPixelData) as caught:
        frames(part10(image()), [1])
    assert caught.value.http_status == 404


def test_float_pixel_data_is_not_served_as_frames() -> None:
    ds = image(bits=32)
    ds.FloatPixelData = np.zeros(16, np.float32).tobytes()
    with pytest.raises(NotRenderable) as caught:
        frames(part10(ds), [1])
    assert caught.value.http_status == 406


@pytest.mark.parametrize(
    "syntax",
    [
        "1.2.826.0.1.3680043.9999.1",  # a private transfer syntax
        "1.2.840.10008.1.2.4.100",  # MPEG-2 video: no separable frames
    ],
)
def test_a_syntax_without_separable_frames_is_refused(syntax: str) -> None:
    ds = image(syntax, encapsulated_frames=[b"\x00" * 16])
    with pytest.raises(UnsupportedTransferSyntax) as caught:
        frames(part10(ds), [1])
    assert caught.value.http_status == 406


def test_truncated_pixel_data_is_reported_as_corrupt() -> None:
    ds = image(rows=4, columns=4, frames=2, pixel_data=bytes(16))  # needs 32 bytes
    with pytest.raises(CorruptPixelData):
        frames(part10(ds), [2])
    assert frames(part10(ds), [1])[0].data == bytes(16)


def test_missing_encapsulated_frame_is_reported_as_corrupt() -> None:
    ds = image("1.2.840.10008.1.2.5", frames=3, encapsulated_frames=[b"ab", b"cd"])
    with pytest.raises(CorruptPixelData):
        frames(part10(ds), [3])


@pytest.mark.parametrize(
    ("little", "big"),
    [
        ("OBXXXX1A_2frame.dcm", "OBXXXX1A_expb_2frame.dcm"),  # 8 bits in OW: swapped words
        ("SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm"),  # 27 bytes, odd
        ("SC_rgb_32bit_2frame.dcm", "SC_rgb_expb_32bit_2frame.dcm"),
        ("rtdose.dcm", "rtdose_expb.dcm"),
        ("liver.dcm", "liver_expb.dcm"),  # 1 bit in OB: no swap
    ],
)
def test_big_endian_frames_equal_their_little_endian_twins(little: str, big: str) -> None:
    count = int(dataset(little).get("NumberOfFrames") or 1)
    numbers = list(range(1, count + 1))
    assert [f.data for f in frames(stored(big), numbers)] == [
        f.data for f in frames(stored(little), numbers)
    ]
