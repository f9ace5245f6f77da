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


def test_a_corrupted_object_is_still_500() -> None:
    archive = Archive()
    for key, data in list(archive.store.objects.items()):
        if IN_EXPLICIT in key:
            archive.store.objects[key] = data[:-1] + bytes([data[-1] ^ 0xFF])
    answer = archive.get(INSTANCE, DICOM)
    assert answer.status_code == 500
    assert "fails its SHA-256 check" in answer.json()["message"]
