"""Stored objects for the render tests: pydicom's own test files (and pydicom-data's), read
as the archive reads them (the Part 10 bytes), plus a few made here for refusals."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid


def path(name: str) -> Path:
    found = get_testdata_file(name)
    assert found is not None, f"pydicom test file {name} missing"
    return Path(str(found))


def stored(name: str) -> bytes:
    """The Part 10 bytes of a pydicom test file, as they would be in the object store."""
    return path(name).read_bytes()


def dataset(name: str) -> Dataset:
    return dcmread(path(name))


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    if ds.file_meta.TransferSyntaxUID.is_private:  # pydicom needs the encoding spelled out
        ds.save_as(out, enforce_file_format=True, implicit_vr=False, little_endian=True)
    else:
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def image(
    syntax: str = ExplicitVRLittleEndian,
    *,
    rows: int = 4,
    columns: int = 4,
    frames: int | None = None,
    bits: int = 8,
    pixel_data: bytes | None = None,
    encapsulated_frames: list[bytes] | None = None,
) -> Dataset:
    """A small secondary capture image with the pixel elements the tests vary."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    if frames is not None:
        ds.NumberOfFrames = frames
    if encapsulated_frames is not None:
        ds.PixelData = encapsulate(encapsulated_frames)
        ds["PixelData"].VR = "OB"
    elif pixel_data is not None:
        ds.PixelData = pixel_data
        ds["PixelData"].VR = "OB" if bits <= 8 else "OW"
    return ds


def png_pixels(data: bytes) -> np.ndarray:
    """A PNG or JPEG body decoded by Pillow to an array (the client's view of it)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture)
