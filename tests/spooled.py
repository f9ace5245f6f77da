"""A C-STORE data set spooled as it arrives (``dimse/receiving.py``), made without a
network: for the tests of what keeps a spool (the file store names it, others read it)."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from pynetdicom.dimse_messages import C_STORE_RQ

from mimic_server.codec.file_meta import encode_file_meta
from mimic_server.dimse.receiving import ReceiveLimits, ReceivingDataSet, SpoolStart

SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.77"
#: Spooled past this many bytes (the server's bound is 8 MiB).
IN_MEMORY = 4096
FILE_META = encode_file_meta(SecondaryCaptureImageStorage, SOP_INSTANCE,
                             ExplicitVRLittleEndian, "MODALITY1")


def data_set(pixels: int = 96 * 1024) -> bytes:
    """An Explicit VR Little Endian Secondary Capture data set with ``pixels`` bytes of
    Pixel Data (a multiple of 256)."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = SOP_INSTANCE
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.PatientID = "NAMED-SPOOL"
    ds.Modality = "OT"
    ds.PixelData = bytes(range(256)) * (pixels // 256)
    ds["PixelData"].VR = "OB"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def spooled(directory: Path, data: bytes, limit: int = 1 << 30,
            finish: bool = True) -> ReceivingDataSet:
    """``data`` received as the DUL writes it (in PDV-sized pieces), spooled in
    ``directory/spool``; ``finish``: its end seen, as the C-STORE handler does first."""
    received = ReceivingDataSet(
        ReceiveLimits(limit, directory / "spool", in_memory=IN_MEMORY), C_STORE_RQ(),
        lambda _message: SpoolStart(FILE_META, ExplicitVRLittleEndian))
    for start in range(0, len(data), 16378):
        received.write(memoryview(data)[start:start + 16378])
    if finish:
        received.finish()
    return received
