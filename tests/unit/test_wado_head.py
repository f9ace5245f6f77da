"""HEAD on the WADO-RS resources: Starlette answers HEAD on every GET route by running the
GET, so a HEAD of a study read and verified each of its objects from the store, for an
answer without content, and recorded DICOM Instances Transferred to the user in the audit
trail though nothing was. PS3.18 defines GET: HEAD is now 405 (Allow: GET), with nothing
read and nothing recorded."""

from __future__ import annotations

import hashlib
import io
from typing import BinaryIO

import pydicom
import pytest
from starlette.testclient import TestClient

from mimic_server.query.finder import InstanceRef
from mimic_server.security.audit import AuditLog
from mimic_server.security.policy import Policy
from mimic_server.storage.keys import new_object_key
from mimic_server.storage.memory import MemoryStore
from mimic_server.web.dicomweb.app import build_dicomweb
from mimic_server.web.dicomweb.context import DicomWebContext
from tests.data import ct_small
from tests.dicomweb_doubles import InstanceFinder, RecordedDetails


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.opened = 0

    def open(self, key: str) -> BinaryIO:
        self.opened += 1
        return super().open(key)


@pytest.fixture
def archive() -> tuple[TestClient, CountingStore, RecordedDetails, str]:
    data = open(ct_small(), "rb").read()  # noqa: SIM115
    ds = pydicom.dcmread(io.BytesIO(data))
    key = new_object_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    store, records = CountingStore(), RecordedDetails()
    store.objects[key] = data
    ref = InstanceRef(ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID, key,
                      hashlib.sha256(data).hexdigest())
    ctx = DicomWebContext(finder=InstanceFinder(ref), store=store,  # type: ignore[arg-type]
                          policy=Policy("MIMIC"), audit=AuditLog(None, sinks=[records]),
                          tokens=None, auth="none")
    study = f"/studies/{ds.StudyInstanceUID}"
    return TestClient(build_dicomweb(ctx)), store, records, study


@pytest.mark.parametrize("resource", [
    "", "/series/{series}", "/series/{series}/instances/{instance}", "/metadata",
    "/series/{series}/instances/{instance}/metadata",
    "/series/{series}/instances/{instance}/bulkdata/7FE00010",
    "/series/{series}/instances/{instance}/frames/1",
    "/series/{series}/instances/{instance}/rendered", "/thumbnail",
])
def test_head_reads_nothing_and_records_no_transfer(
    archive: tuple[TestClient, CountingStore, RecordedDetails, str], resource: str,
) -> None:
    client, store, records, study = archive
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    path = study + resource.format(series=ds.SeriesInstanceUID, instance=ds.SOPInstanceUID)
    answer = client.head(path)
    assert answer.status_code == 405
    assert "GET" in answer.headers["allow"]
    assert store.opened == 0
    assert records.records == []
    assert client.get(path).status_code == 200  # GET as before: read, and recorded
    assert store.opened >= 1 and records.records
