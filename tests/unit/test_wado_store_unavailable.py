"""WADO-RS of one instance while the object store cannot be read (Blob Storage throttling
with 503 ServerBusy, down, refusing): answered 500 "the stored object cannot be read or
fails its SHA-256 check", the answer for a lost or corrupted object, which a viewer does not
retry and which sends an operator looking for corruption. Now 503 with Retry-After, as an
index that does not answer is; a corrupted object stays 500."""

from __future__ import annotations

from typing import Any

import pytest

from mimic_server.errors import OutOfResources
from tests.unit.test_wado_accept_syntaxes import DICOM, IN_EXPLICIT, SERIES, Archive

INSTANCE = f"/series/{SERIES}/instances/{IN_EXPLICIT}"
FRAMES = (f"{INSTANCE}/frames/1", 'multipart/related; type="application/octet-stream"')


def _store_down(archive: Archive) -> None:
    def refuse(key: str) -> Any:
        raise OutOfResources("blob store read failed: ServerBusy")

    archive.store.open = refuse  # type: ignore[method-assign]


@pytest.mark.parametrize(("path", "accept"), [(INSTANCE, DICOM), FRAMES],
                         ids=["instance", "frames"])
def test_an_object_store_that_cannot_be_read_is_503(path: str, accept: str) -> None:
    archive = Archive()
    assert archive.get(path, accept).status_code == 200
    _store_down(archive)
    answer = archive.get(path, accept)
    assert answer.status_code == 503, answer.text
    assert answer.json()["message"] == "the object store is unavailable"
    assert answer.headers["retry-after"] == "10"


def _corrupt_explicit(archive: Archive) -> None:
    """The Explicit VR object's last byte flipped: it no longer matches its SHA-256."""
    for key, data in list(archive.store.objects.items()):
        if IN_EXPLICIT in key:
            archive.store.objects[key] = data[:-1] + bytes([data[-1] ^ 0xFF])


def test_a_corrupted_object_is_still_500() -> None:
    archive = Archive()
    _corrupt_explicit(archive)
    answer = archive.get(INSTANCE, DICOM)
    assert answer.status_code == 500
    assert "fails its SHA-256 check" in answer.json()["message"]


@pytest.mark.parametrize(("path", "accept"), [
    ("", DICOM), (f"/series/{SERIES}", DICOM), ("/metadata", "application/dicom+json"),
], ids=["study", "series", "metadata"])
def test_a_study_whose_store_cannot_be_read_is_503(path: str, accept: str) -> None:
    """A viewer opening a study (its metadata first) during a store outage: 500 "no stored
    object of this resource can be read", as if the study were lost."""
    archive = Archive()
    assert archive.get(path, accept).status_code == 200
    _store_down(archive)
    answer = archive.get(path, accept)
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "10"


def test_a_study_with_a_corrupted_object_and_the_store_down_for_the_other_is_500() -> None:
    """Not every object failed for the store: one is lost for good, so 500 as before."""
    archive = Archive()
    _corrupt_explicit(archive)
    opened = archive.store.open

    def refuse_the_other(key: str) -> Any:
        if IN_EXPLICIT in key:
            return opened(key)
        raise OutOfResources("blob store read failed: ServerBusy")

    archive.store.open = refuse_the_other  # type: ignore[method-assign]
    assert archive.get("", DICOM).status_code == 500
    assert archive.get("/metadata", "application/dicom+json").status_code == 500
