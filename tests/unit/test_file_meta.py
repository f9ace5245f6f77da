"""The File Meta Information MIMIC writes is byte for byte what pydicom writes."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from mimic_server.codec.file_meta import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    encode_file_meta,
)


def _pydicom(sop_class: str, sop_instance: str, syntax: str, ae_title: str) -> bytes:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if ae_title:
        meta.SourceApplicationEntityTitle = ae_title
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax", "ae_title"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", "MODALITY1"),
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2", "CT"),
        ("1.2.840.10008.5.1.4.1.1.7", "2.25.1234567", "1.2.840.10008.1.2.4.50", ""),
        ("1.2.840.10008.5.1.4.1.1.4", "1." + "2" * 62, "1.2.840.10008.1.2.4.201", "A" * 16),
    ],
)
def test_same_bytes_as_pydicom(sop_class: str, sop_instance: str, syntax: str,
                               ae_title: str) -> None:
    ours = encode_file_meta(sop_class, sop_instance, syntax, ae_title)
    assert ours == _pydicom(sop_class, sop_instance, syntax, ae_title)
    meta = pydicom.dcmread(io.BytesIO(ours)).file_meta
    assert meta.MediaStorageSOPInstanceUID == sop_instance
    assert meta.TransferSyntaxUID == syntax
