"""A C-STORE data set spooled as it arrives (``dimse/receiving.py``), made without a
network: for the tests of what keeps a spool (the file store names it, others read it)."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

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


def acceptor(spool_dir: Path, sop_class: str, fast: bool = True) -> Any:
    """An acceptor association as the server makes one for MODALITY1: one accepted context
    (ID 1, ``sop_class`` in Explicit VR Little Endian), its session, and every message
    received in bounded memory (spooled in ``spool_dir`` past :data:`IN_MEMORY`; ``fast``:
    C-STORE-RQs assembled by MIMIC, else by pynetdicom)."""
    from pynetdicom import AE
    from pynetdicom.association import Association
    from pynetdicom.presentation import build_context

    from mimic_server.dimse.receiving import receive_in_bounded_memory
    from mimic_server.dimse.session import Session, attach_session
    from mimic_server.security.identity import Identity

    assoc = Association(AE(), "acceptor")
    context = build_context(sop_class, [ExplicitVRLittleEndian])
    context.context_id, context._as_scp = 1, True
    assoc._accepted_cx = {1: context}
    attach_session(assoc, Session(Identity("modality1", "ab" * 32, "modality1"),
                                  "MODALITY1", "MIMIC"))
    receive_in_bounded_memory(assoc, ReceiveLimits(1 << 30, spool_dir, in_memory=IN_MEMORY),
                              store_requests=fast)
    return assoc


def dul_events(assoc: Any) -> list[str]:
    """The events queued for the association's DUL (``Evt19``: an A-ABORT), taken."""
    found = []
    while True:
        try:
            found.append(assoc.dul.event_queue.get_nowait())
        except queue.Empty:
            return found
