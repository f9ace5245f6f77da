"""WADO-RS of an instance sent again after the request found it: its object key changed and
the old object was deleted once the new row committed. The version stored now is sent, named
by its own transfer syntax, and audited as sent, as a C-GET's sub-operation is
(``archive/read.py``); one no longer in the transfer syntax asked for is not sent."""

from __future__ import annotations

import hashlib
import io
import logging
from typing import Any

import pydicom
import pydicom.data
import pytest
from starlette.testclient import TestClient

from mimic_server.query.finder import InstanceRef
from mimic_server.security.audit import AuditLog
from mimic_server.security.policy import Policy
from mimic_server.storage.keys import new_object_key
from mimic_server.storage.memory import MemoryStore
from mimic_server.web.dicomweb import wado
from mimic_server.web.dicomweb.app import build_dicomweb
from mimic_server.web.dicomweb.context import DicomWebContext
from tests.data import ct_small
from tests.dicomweb_doubles import RecordedDetails as Details

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
STUDY, SERIES = "1.2.826.0.1.3680043.8.498.7", "1.2.826.0.1.3680043.8.498.7.1"
FIRST, SECOND = f"{SERIES}.1", f"{SERIES}.2"
CT = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIPART = 'multipart/related; type="application/dicom"'




class Finder:
    """The index as the routes see it: the match list read when the request came, and the
    rows stored now."""

    def __init__(self, matched: list[InstanceRef], now: dict[str, InstanceRef]) -> None:
        self.matched, self.now = matched, now
        self.asked: list[str] = []

    def instances(self, query: Any) -> list[InstanceRef]:
        return list(self.matched)

    def instance(self, study: str, series: str, sop_instance: str) -> list[InstanceRef]:
        return [r for r in self.matched if r.sop_instance_uid == sop_instance]

    def current(self, ref: InstanceRef) -> InstanceRef | None:
        self.asked.append(ref.sop_instance_uid)
        return self.now.get(ref.sop_instance_uid)


def _object(store: MemoryStore, uid: str, syntax: str, marker: bytes,
            sop_class: str = CT) -> tuple[InstanceRef, bytes]:
    """An object of the CT slice stored under a fresh key of the series, encoded in
    ``syntax``, made distinct by ``marker``."""
    ds = pydicom.dcmread(ct_small())
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = syntax
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.ImageComments = marker.decode()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    key = new_object_key(STUDY, SERIES, uid)
    store.objects[key] = data
    return InstanceRef(sop_class, uid, syntax, key, hashlib.sha256(data).hexdigest()), data


class Archive:
    """Two instances matched; the first was sent again (in another transfer syntax) before
    its object was read."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        old, self.old_bytes = _object(self.store, FIRST, EXPLICIT, b"first, as matched")
        del self.store.objects[old.object_key]  # deleted once the new row committed
        self.new, self.new_bytes = _object(self.store, FIRST, IMPLICIT, b"first, sent again",
                                           SECONDARY_CAPTURE)
        self.second, self.second_bytes = _object(self.store, SECOND, EXPLICIT, b"second")
        self.finder = Finder([old, self.second], {FIRST: self.new, SECOND: self.second})
        self.audit = Details()
        ctx = DicomWebContext(finder=self.finder, store=self.store,  # type: ignore[arg-type]
                              policy=Policy("MIMIC"), audit=AuditLog(None, sinks=[self.audit]),
                              tokens=None, auth="none")
        self.client = TestClient(build_dicomweb(ctx))

    def get(self, path: str, accept: str = MULTIPART) -> Any:
        return self.client.get(f"/studies/{STUDY}{path}", headers={"Accept": accept})


def test_a_study_retrieve_sends_the_version_stored_now(caplog: pytest.LogCaptureFixture) -> None:
    archive = Archive()
    with caplog.at_level(logging.INFO):
        answer = archive.get("")
    assert answer.status_code == 200
    body = answer.content
    assert archive.new_bytes in body and archive.second_bytes in body
    assert b"first, as matched" not in body
    # Each part is named by the transfer syntax of what it holds, not of what matched.
    assert body.count(f"application/dicom; transfer-syntax={IMPLICIT}\r\n".encode()) == 1
    assert body.count(f"application/dicom; transfer-syntax={EXPLICIT}\r\n".encode()) == 1
    assert archive.finder.asked == [FIRST]  # only the missing object was looked up
    record = archive.audit.transferred()
    assert record["instances"] == 2 and record["failed"] == 0
    # Counted as what was sent: the version stored now, of another SOP Class.
    assert record["studies"] == {STUDY: {SECONDARY_CAPTURE: 1, CT: 1}}
    assert "stored again since it matched" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("streamed", [False, True])
def test_one_instance_is_sent_as_it_is_now(streamed: bool, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """Answered whole (up to 1 MiB) or streamed: the version stored now either way."""
    if streamed:
        monkeypatch.setattr(wado, "WHOLE_ANSWER_BYTES", 0)
    archive = Archive()
    answer = archive.get(f"/series/{SERIES}/instances/{FIRST}")
    assert answer.status_code == 200
    assert archive.new_bytes in answer.content
    assert f"transfer-syntax={IMPLICIT}".encode() in answer.content
    record = archive.audit.transferred()
    assert record["failed"] == 0 and record["studies"] == {STUDY: {SECONDARY_CAPTURE: 1}}


def test_no_longer_in_the_transfer_syntax_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    """Asked for the syntax it matched in, the version sent again is in another: a study's
    retrieve leaves it out (failed, WARNING); one instance's is 406, nothing sent."""
    archive = Archive()
    with caplog.at_level(logging.INFO):
        answer = archive.get("", f"{MULTIPART}; transfer-syntax={EXPLICIT}")
    assert answer.status_code == 200
    assert archive.second_bytes in answer.content and archive.new_bytes not in answer.content
    record = archive.audit.transferred()
    assert record["instances"] == 1 and record["failed"] == 1
    assert any(r.levelno == logging.WARNING and r.name == wado.__name__ for r in caplog.records)

    archive = Archive()
    answer = archive.get(f"/series/{SERIES}/instances/{FIRST}",
                         f"{MULTIPART}; transfer-syntax={EXPLICIT}")
    assert answer.status_code == 406
    assert archive.new_bytes not in answer.content
    record = archive.audit.transferred()  # read, not sent: a failed transfer
    assert record["instances"] == 0 and record["failed"] == 1


def test_metadata_of_the_version_stored_now() -> None:
    archive = Archive()
    answer = archive.get("/metadata", "application/dicom+json")
    assert answer.status_code == 200
    comments = [d["00204000"]["Value"][0] for d in answer.json()]
    assert comments == ["first, sent again", "second"]
    assert archive.audit.transferred()["failed"] == 0


def test_without_the_row_stored_now_the_instance_fails_as_before() -> None:
    """Deleted since it matched: not sent, counted as failed; the rest is sent."""
    archive = Archive()
    archive.finder.now.pop(FIRST)
    answer = archive.get("")
    assert answer.status_code == 200
    assert archive.second_bytes in answer.content and archive.new_bytes not in answer.content
    record = archive.audit.transferred()
    assert record["instances"] == 1 and record["failed"] == 1


def test_frames_and_rendered_of_the_version_stored_now() -> None:
    archive = Archive()
    instance = f"/series/{SERIES}/instances/{FIRST}"
    frames = archive.get(f"{instance}/frames/1",
                         'multipart/related; type="application/octet-stream"')
    assert frames.status_code == 200
    pixels = pydicom.dcmread(io.BytesIO(archive.new_bytes)).PixelData
    assert pixels in frames.content
    assert archive.audit.transferred()["failed"] == 0

    for resource in ("rendered", "thumbnail"):
        archive = Archive()
        image = archive.get(f"{instance}/{resource}", "image/png")
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        record = archive.audit.transferred()
        assert record["failed"] == 0 and record["studies"] == {STUDY: {SECONDARY_CAPTURE: 1}}


def test_bulk_data_of_the_version_stored_now() -> None:
    archive = Archive()
    answer = archive.get(f"/series/{SERIES}/instances/{FIRST}/bulkdata/7FE00010",
                         'multipart/related; type="application/octet-stream"')
    assert answer.status_code == 200
    assert pydicom.dcmread(io.BytesIO(archive.new_bytes)).PixelData in answer.content
    assert archive.audit.transferred()["studies"] == {STUDY: {SECONDARY_CAPTURE: 1}}


JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _sent_again_as_jpeg(archive: Archive) -> bytes:
    """Make the first instance's version stored now a JPEG Baseline image (a real one from
    pydicom's test files): its frames are image/jpeg, never application/octet-stream."""
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = FIRST
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    del archive.store.objects[archive.new.object_key]
    key = new_object_key(STUDY, SERIES, FIRST)
    archive.store.objects[key] = data
    archive.finder.now[FIRST] = InstanceRef(SECONDARY_CAPTURE, FIRST, JPEG_BASELINE, key,
                                            hashlib.sha256(data).hexdigest())
    return data


def test_frames_of_a_version_in_another_media_type_are_negotiated_again() -> None:
    """The frames' media type follows the transfer syntax of the version read: one sent
    again as JPEG is 406 to a client that takes only application/octet-stream (MIMIC does not
    transcode), with the transfer recorded as failed; a client that takes image/jpeg too
    gets the JPEG frame."""
    archive = Archive()
    _sent_again_as_jpeg(archive)
    instance = f"/series/{SERIES}/instances/{FIRST}"
    refused = archive.get(f"{instance}/frames/1",
                          'multipart/related; type="application/octet-stream"')
    assert refused.status_code == 406
    assert b"\xff\xd8" not in refused.content  # no JPEG stream left
    record = archive.audit.transferred()
    assert record["instances"] == 0 and record["failed"] == 1

    archive = Archive()
    _sent_again_as_jpeg(archive)
    taken = archive.get(f"{instance}/frames/1",
                        'multipart/related; type="application/octet-stream", '
                        'multipart/related; type="image/jpeg"')
    assert taken.status_code == 200
    assert 'type="image/jpeg"' in taken.headers["Content-Type"]
    assert b"Content-Type: image/jpeg" in taken.content and b"\xff\xd8\xff" in taken.content
    record = archive.audit.transferred()
    assert record["failed"] == 0 and record["studies"] == {STUDY: {SECONDARY_CAPTURE: 1}}
