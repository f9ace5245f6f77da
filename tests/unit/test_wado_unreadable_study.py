"""WADO-RS of a study or series whose objects fail their SHA-256 check: with none that can
be read, the retrieve answered 200 and an empty multipart body (its close delimiter alone),
which a viewer shows as an empty study, where the study's metadata answered 500. The first
object that can be sent is now read before the answer starts: none is a 500 (nothing sent,
every instance recorded as failed); those before it are left out as failed, as before."""

from __future__ import annotations

import pytest

from tests.dicomweb_doubles import RecordedDetails
from tests.unit.test_wado_accept_syntaxes import (
    DICOM,
    IN_EXPLICIT,
    IN_IMPLICIT,
    SERIES,
    Archive,
)


def _damaged(archive: Archive, *uids: str) -> None:
    """The stored objects of ``uids`` changed: they fail their SHA-256 check."""
    for key, data in list(archive.store.objects.items()):
        if any(uid in key for uid in uids):
            archive.store.objects[key] = data[:-1] + bytes([data[-1] ^ 0xFF])


@pytest.mark.parametrize("resource", ["", f"/series/{SERIES}"])
def test_a_study_none_of_whose_objects_can_be_read_is_500(resource: str) -> None:
    records = RecordedDetails()
    archive = Archive([records])
    _damaged(archive, IN_EXPLICIT, IN_IMPLICIT)
    answer = archive.get(resource, DICOM)
    assert answer.status_code == 500
    assert b"Content-Type: application/dicom" not in answer.content
    record = records.transferred()
    assert record["instances"] == 0 and record["failed"] == 2


def test_a_study_whose_first_object_cannot_be_read_sends_the_rest() -> None:
    records = RecordedDetails()
    archive = Archive([records])
    _damaged(archive, IN_EXPLICIT)
    answer = archive.get("", DICOM)
    assert answer.status_code == 200
    assert archive.bytes[IN_IMPLICIT] in answer.content
    assert archive.bytes[IN_EXPLICIT][:-1] not in answer.content
    assert answer.content.count(b"Content-Type: application/dicom") == 1
    record = records.transferred()
    assert record["instances"] == 1 and record["failed"] == 1


def test_metadata_of_a_study_with_an_unreadable_object_says_what_it_left_out() -> None:
    """Built whole before it is sent, the metadata can say it is not the whole study: it
    was a 200 that looked complete, one instance short."""
    archive = Archive([RecordedDetails()])
    whole = archive.get("/metadata", "application/dicom+json")
    assert whole.status_code == 200 and len(whole.json()) == 2
    assert "warning" not in whole.headers
    _damaged(archive, IN_EXPLICIT)
    answer = archive.get("/metadata", "application/dicom+json")
    assert answer.status_code == 200 and len(answer.json()) == 1
    assert answer.headers["warning"] == (
        '299 MIMIC "1 of 2 instances could not be read and are left out."')
