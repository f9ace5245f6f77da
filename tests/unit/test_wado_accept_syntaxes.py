"""WADO-RS instances and an Accept header naming several transfer syntaxes (PS3.18 8.7.3.5):
every syntax the header names, or lets in with a range without one, is taken. MIMIC does not
transcode, so an instance is sent when its stored syntax is among them; deciding on the most
specific range alone took only the first syntax listed and answered 406 to a client that
also accepted the stored one."""

from __future__ import annotations

import hashlib
import io
from typing import Any

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

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG = "1.2.840.10008.1.2.4.50"
STUDY, SERIES = "1.2.826.0.1.3680043.8.498.9", "1.2.826.0.1.3680043.8.498.9.1"
IN_EXPLICIT, IN_IMPLICIT = f"{SERIES}.1", f"{SERIES}.2"
CT = "1.2.840.10008.5.1.4.1.1.2"
DICOM = 'multipart/related; type="application/dicom"'


class Finder:
    def __init__(self, refs: list[InstanceRef]) -> None:
        self.refs = refs

    def instances(self, query: Any) -> list[InstanceRef]:
        return list(self.refs)

    def instance(self, study: str, series: str, sop_instance: str) -> list[InstanceRef]:
        return [r for r in self.refs if r.sop_instance_uid == sop_instance]

    def current(self, ref: InstanceRef) -> InstanceRef | None:
        return ref


class Archive:
    """One study: an instance stored in Explicit VR Little Endian, one in Implicit."""

    def __init__(self, audit_sinks: list[Any] | None = None) -> None:
        self.store = MemoryStore()
        self.bytes: dict[str, bytes] = {}
        refs = [self._object(IN_EXPLICIT, EXPLICIT), self._object(IN_IMPLICIT, IMPLICIT)]
        ctx = DicomWebContext(finder=Finder(refs), store=self.store,  # type: ignore[arg-type]
                              policy=Policy("MIMIC"),
                              audit=AuditLog(None, sinks=audit_sinks or []),
                              tokens=None, auth="none")
        self.client = TestClient(build_dicomweb(ctx))

    def _object(self, uid: str, syntax: str) -> InstanceRef:
        ds = pydicom.dcmread(ct_small())
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.TransferSyntaxUID = syntax
        ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = self.bytes[uid] = buffer.getvalue()
        key = new_object_key(STUDY, SERIES, uid)
        self.store.objects[key] = data
        return InstanceRef(CT, uid, syntax, key, hashlib.sha256(data).hexdigest())

    def get(self, path: str, accept: str) -> Any:
        return self.client.get(f"/studies/{STUDY}{path}", headers={"Accept": accept})


def _syntax(uid: str) -> str:
    return f"{DICOM}; transfer-syntax={uid}"


@pytest.mark.parametrize("accept", [
    f"{_syntax(JPEG)}, {_syntax(EXPLICIT)}",  # two syntaxes, the stored one second
    f"{_syntax(JPEG)}, {_syntax('*')}; q=0.5",  # JPEG preferred, anything else after it
    f"{_syntax(JPEG)}, {DICOM}; q=0.5",  # the same without the parameter
    f"{_syntax(JPEG)}, */*",
])
def test_an_instance_in_a_syntax_listed_after_another_is_sent(accept: str) -> None:
    archive = Archive()
    answer = archive.get(f"/series/{SERIES}/instances/{IN_EXPLICIT}", accept)
    assert answer.status_code == 200, answer.text
    assert archive.bytes[IN_EXPLICIT] in answer.content
    assert f"transfer-syntax={EXPLICIT}".encode() in answer.content


def test_a_study_sends_the_instances_of_every_syntax_listed() -> None:
    archive = Archive()
    answer = archive.get("", f"{_syntax(EXPLICIT)}, {_syntax(IMPLICIT)}")
    assert answer.status_code == 200
    assert archive.bytes[IN_EXPLICIT] in answer.content
    assert archive.bytes[IN_IMPLICIT] in answer.content
    answer = archive.get("", f"{_syntax(JPEG)}, {_syntax(IMPLICIT)}")
    assert answer.status_code == 200
    assert archive.bytes[IN_IMPLICIT] in answer.content
    assert archive.bytes[IN_EXPLICIT] not in answer.content


@pytest.mark.parametrize("accept", [
    _syntax(JPEG),  # the one syntax named is not the stored one
    f"{_syntax(JPEG)}, {_syntax(IMPLICIT)}",
    f"{_syntax(EXPLICIT)}; q=0, {_syntax(JPEG)}",  # the stored one refused by q=0
])
def test_still_406_when_no_syntax_accepted_is_the_stored_one(accept: str) -> None:
    archive = Archive()
    answer = archive.get(f"/series/{SERIES}/instances/{IN_EXPLICIT}", accept)
    assert answer.status_code == 406
    assert archive.bytes[IN_EXPLICIT] not in answer.content

