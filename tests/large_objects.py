"""Large DICOM files written without holding them in memory: a small header, then Pixel
Data of zeros made by extending the file (sparse on disk)."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)


def dataset_digest(path: Path) -> str:
    """SHA-256 of a Part 10 file's data set (after its File Meta group), read in pieces:
    what the archive records and checks of an object, for a file written or received."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        head = fh.read(144)
        fh.seek(144 + struct.unpack_from("<L", head, 140)[0])
        while piece := fh.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def _dataset(sop_class: str, uid: str, syntax: str) -> Dataset:
    """A data set of ``sop_class`` and ``uid`` with its File Meta naming ``syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    return ds


def _write_header(path: Path, sop_class: str, uid: str | None = None,
                  syntax: str = ExplicitVRLittleEndian, **attributes: object) -> str:
    """A Part 10 file of ``sop_class`` (explicit VR little endian, or ``syntax``) holding
    ``attributes``, to be extended by its caller; its SOP Instance UID (``uid``, or a new
    one)."""
    uid = uid or generate_uid()
    ds = _dataset(sop_class, uid, syntax)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return uid


def write_large(path: Path, pixel_bytes: int, sop_instance_uid: str | None = None,
                implicit: bool = False) -> str:
    """A Secondary Capture object with ``pixel_bytes`` of zero pixels, in Explicit VR Little
    Endian (or Implicit); its SOP Instance UID."""
    columns = 16384
    rows = pixel_bytes // (columns * 2)
    length = rows * columns * 2
    uid = _write_header(
        path, SecondaryCaptureImageStorage, PatientID="LARGE", PatientName="Large^Object",
        StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), Modality="OT",
        SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2", Rows=rows,
        Columns=columns, BitsAllocated=16, BitsStored=16, HighBit=15, PixelRepresentation=0,
        uid=sop_instance_uid, syntax=ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian,
    )
    with open(path, "ab") as fh:
        fh.write((b"\xe0\x7f\x10\x00" if implicit else b"\xe0\x7f\x10\x00OW\x00\x00")
                 + length.to_bytes(4, "little"))
        fh.truncate(fh.tell() + length)
    return uid


def write_large_deflated(path: Path, pixel_bytes: int) -> tuple[str, str]:
    """``write_large``'s object in Deflated Explicit VR Little Endian (zero pixels deflate
    about 1000:1: 160 MiB of them are some 160 KB), its data set deflated a megabyte at a
    time; its SOP Instance UID and the SHA-256 of its data set inflated."""
    plain = path.with_suffix(".plain")
    uid = write_large(plain, pixel_bytes)
    meta = read_file_meta_info(plain)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    digest = hashlib.sha256()
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(plain, "rb") as source, open(path, "wb") as fh:
        head = source.read(144)
        source.seek(144 + struct.unpack_from("<L", head, 140)[0])
        fh.write(b"\0" * 128 + b"DICM")
        buffer = DicomBytesIO()
        write_file_meta_info(buffer, meta)
        fh.write(buffer.getvalue())
        while piece := source.read(1 << 20):
            digest.update(piece)
            fh.write(deflater.compress(piece))
        fh.write(deflater.flush())
    plain.unlink()
    return uid, digest.hexdigest()


ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def write_large_document(path: Path, document_bytes: int) -> str:
    """An Encapsulated PDF object (no Pixel Data: the document is the header's last element)
    of ``document_bytes`` zeros, sparse on disk; its SOP Instance UID."""
    uid = _write_header(
        path, ENCAPSULATED_PDF, PatientID="LARGE", PatientName="Large^Document",
        StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), Modality="DOC",
        MIMETypeOfEncapsulatedDocument="application/pdf",
    )
    with open(path, "ab") as fh:
        fh.write(struct.pack("<HH2sHL", 0x0042, 0x0011, b"OB", 0, document_bytes))
        fh.truncate(fh.tell() + document_bytes)
    return uid


def _write_private(path: Path, patient_id: str, private: Callable[[BinaryIO], None]) -> str:
    """A Secondary Capture object whose header holds what ``private`` writes (elements
    before group 0010) before its patient, study and series; its SOP Instance UID."""
    uid = _write_header(path, SecondaryCaptureImageStorage)
    rest = Dataset()
    rest.PatientID = patient_id
    rest.StudyInstanceUID = generate_uid()
    rest.SeriesInstanceUID = generate_uid()
    tail = io.BytesIO()
    rest.save_as(tail, implicit_vr=False, little_endian=True)
    with open(path, "ab") as fh:
        private(fh)
        fh.write(tail.getvalue())
    return uid


def write_many_elements(path: Path, count: int) -> str:
    """A Secondary Capture object whose header has ``count`` (at most 61,440) empty private
    elements of group 0009 (8 bytes each) before its patient, study and series; its SOP
    Instance UID."""
    assert count <= 0xF000

    def private(fh: BinaryIO) -> None:
        fh.write(b"".join(struct.pack("<HH2sH", 0x0009, 0x1000 + n, b"LO", 0)
                          for n in range(count)))

    return _write_private(path, "MANY", private)


def write_long_values(path: Path, count: int, size: int) -> str:
    """A Secondary Capture object whose header has ``count`` (at most 61,440) private UT
    values of ``size`` bytes each (group 0009, before its patient, study and series) and a
    sequence of undefined length; its SOP Instance UID."""
    assert count <= 0xF000 and size % 2 == 0
    item = struct.pack("<HH2sH", 0x0008, 0x1150, b"UI", 4) + b"1.2\x00"

    def private(fh: BinaryIO) -> None:
        fh.write(struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
                 + struct.pack("<HHL", 0xFFFE, 0xE000, len(item)) + item
                 + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
        for n in range(count):
            fh.write(struct.pack("<HH2sHL", 0x0009, 0x1000 + n, b"UT", 0, size)
                     + b"%08d" % n + b"t" * (size - 8))

    return _write_private(path, "LONG", private)


def large_image(rows: int = 1024, columns: int = 1024, frames: int = 32,
                syntax: str = ExplicitVRLittleEndian, text: int = 0, *,
                study: str | None = None, series: str | None = None) -> tuple[bytes, Dataset]:
    """A 16-bit Secondary Capture image of ``frames`` frames of ``rows`` x ``columns``
    (64 MiB by default: 2 MiB a frame), pixels repeating (a Deflated one some 250:1),
    ``text`` characters of Image Comments; its Part 10 bytes and its data set."""
    ds = _dataset(SecondaryCaptureImageStorage, generate_uid(), syntax)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), series or generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "LARGE", "Large^Web", "OT"
    if text:
        ds.ImageComments = "c" * text
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(range(256)) * (frames * rows * columns * 2 // 256)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return buffer.getvalue(), ds
