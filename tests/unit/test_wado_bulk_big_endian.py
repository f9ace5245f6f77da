"""WADO-RS bulk data of an object stored in Explicit VR Big Endian (retired, still found in
old archives): PS3.18 8.7.3.3 sends uncompressed bulk data as ``application/octet-stream``
in Explicit VR Little Endian, as the frames route sends the same object's native frames.
Sent as stored, a viewer reading Pixel Data through the metadata's BulkDataURI got every
16-bit sample with its bytes swapped, also when it asked for
``transfer-syntax=1.2.840.10008.1.2.1``."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.uid import ExplicitVRBigEndian
from starlette.testclient import TestClient

from mimic_server.query.finder import InstanceRef
from mimic_server.security.audit import AuditLog
from mimic_server.security.policy import Policy
from mimic_server.storage.keys import new_object_key
from mimic_server.storage.memory import MemoryStore
from mimic_server.web.dicomweb import wado
from mimic_server.web.dicomweb.app import build_dicomweb
from mimic_server.web.dicomweb.context import DicomWebContext
from tests.dicomweb_doubles import InstanceFinder

OCTETS = 'multipart/related; type="application/octet-stream"'
#: (0028,1201) Red Palette Color Lookup Table Data, OW: 2,048 bytes, past the 1 KiB
#: threshold of the metadata's BulkDataURI.
LUT_DATA = 0x00281201
LUT = np.arange(1024, dtype=np.uint16) * 61


@pytest.fixture
def stored() -> tuple[TestClient, pydicom.Dataset, str]:
    """MR_small_bigendian (16-bit OW Pixel Data) with an OW lookup table added, as stored."""
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small_bigendian.dcm"))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian and ds.BitsAllocated == 16
    ds.add_new(LUT_DATA, "OW", LUT.astype(">u2").tobytes())  # a Big Endian object's words
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    key = new_object_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    store = MemoryStore()
    store.objects[key] = data
    ref = InstanceRef(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRBigEndian, key,
                      hashlib.sha256(data).hexdigest())
    ctx = DicomWebContext(finder=InstanceFinder(ref), store=store,  # type: ignore[arg-type]
                          policy=Policy("MIMIC"), audit=AuditLog(None, sinks=[]),
                          tokens=None, auth="none")
    path = (f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")
    return TestClient(build_dicomweb(ctx)), pydicom.dcmread(io.BytesIO(data)), path


def _value(answer: Any) -> bytes:
    """The one part's content of a multipart/related answer."""
    boundary = answer.headers["content-type"].split("boundary=")[1].encode()
    body: bytes = answer.content
    start = body.index(b"\r\n\r\n") + 4
    return body[start:body.index(b"\r\n--" + boundary, start)]


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("accept", [OCTETS, f"{OCTETS}; transfer-syntax=1.2.840.10008.1.2.1"])
def test_big_endian_bulk_data_is_sent_little_endian(
    stored: tuple[TestClient, pydicom.Dataset, str], streamed: bool, accept: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, ds, path = stored
    if streamed:  # read a piece at a time, the pieces cutting words in two
        monkeypatch.setattr(wado, "WHOLE_ANSWER_BYTES", 0)
        monkeypatch.setattr(wado, "CHUNK", 7)
    metadata = client.get(f"{path}/metadata", headers={"Accept": "application/dicom+json"})
    assert metadata.status_code == 200
    uri = metadata.json()[0]["7FE00010"]["BulkDataURI"]
    pixels = client.get(uri[uri.index("/studies/"):], headers={"Accept": accept})
    assert pixels.status_code == 200
    assert _value(pixels) == ds.pixel_array.astype("<i2").tobytes()  # as the frame is sent
    frame = client.get(f"{path}/frames/1", headers={"Accept": accept})
    assert _value(frame) == _value(pixels)

    lut = client.get(f"{path}/bulkdata/00281201", headers={"Accept": accept})
    assert lut.status_code == 200
    assert _value(lut) == LUT.astype("<u2").tobytes()
