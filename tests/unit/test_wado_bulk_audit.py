"""WADO-RS bulk data and its audit records: Begin Transferring once there is a value to send,
DICOM Instances Transferred once it was sent whole (outcome 0) or not (4); an element the
instance lacks is a 404 that records nothing; a stored value shorter than its declared length
(an object that passes its SHA-256 check, written so by a faulty sender or tool) is never a
well-formed answer, whether answered whole or streamed."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from mimic_server.query.finder import InstanceRef
from mimic_server.security.audit import AuditLog
from mimic_server.storage.keys import new_object_key
from mimic_server.storage.memory import MemoryStore
from mimic_server.web.dicomweb.app import build_dicomweb
from mimic_server.web.dicomweb.wado import WHOLE_ANSWER_BYTES
from tests.dicomweb_doubles import InstanceFinder, web_context
from tests.unit.test_store_audit import Collected

STUDY, SERIES, UID = "1.2.826.0.1.3680043.8.498.9", "1.2.826.0.1.3680043.8.498.9.1", "1.2.3.4"
EXPLICIT = "1.2.840.10008.1.2.1"
OCTETS = 'multipart/related; type="application/octet-stream"'
PATH = f"/studies/{STUDY}/series/{SERIES}/instances/{UID}"


def _object(declared: int, present: int) -> bytes:
    """Preamble, File Meta, SOP Instance UID, and Pixel Data (OB) declaring ``declared``
    bytes of which ``present`` are there."""
    meta_body = b"\x02\x00\x10\x00UI" + struct.pack("<H", 20) + EXPLICIT.encode() + b"\x00"
    meta = b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(meta_body)) + meta_body
    uid = b"\x08\x00\x18\x00UI" + struct.pack("<H", 8) + UID.encode() + b"\x00"
    pixels = b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", declared) + b"x" * present
    return b"\0" * 128 + b"DICM" + meta + uid + pixels


def _client(data: bytes, tmp_path: Path) -> tuple[TestClient, Collected]:
    store = MemoryStore()
    key = new_object_key(STUDY, SERIES, UID)
    store.objects[key] = data
    ref = InstanceRef("1.2.840.10008.5.1.4.1.1.7", UID, EXPLICIT, key,
                      hashlib.sha256(data).hexdigest())
    collected = Collected()
    ctx = web_context(store, InstanceFinder(ref), tmp_path / "spool",
                      audit=AuditLog(None, sinks=[collected]))
    return TestClient(build_dicomweb(ctx)), collected


def _events(collected: Collected) -> list[tuple[str, int]]:
    return [(e.event_code, e.outcome) for e in collected.entries]


@pytest.mark.parametrize("size", [1000, WHOLE_ANSWER_BYTES + 1000], ids=["whole", "streamed"])
def test_a_value_sent_whole_is_recorded_after_it_was_sent(tmp_path: Path, size: int) -> None:
    client, collected = _client(_object(size, size), tmp_path)
    answer = client.get(PATH + "/bulkdata/7FE00010", headers={"Accept": OCTETS})
    assert answer.status_code == 200 and answer.content.count(b"x") == size
    assert _events(collected) == [("110102", 0), ("110104", 0)]
    assert "instances=1; failed=0" in collected.entries[1].xml


def test_an_element_the_instance_lacks_is_a_404_that_records_nothing(tmp_path: Path) -> None:
    client, collected = _client(_object(10, 10), tmp_path)
    answer = client.get(PATH + "/bulkdata/00100010", headers={"Accept": OCTETS})
    assert answer.status_code == 404
    assert _events(collected) == []


@pytest.mark.parametrize(("declared", "present"), [
    (200_000, 100_000), (WHOLE_ANSWER_BYTES + 2_000_000, WHOLE_ANSWER_BYTES + 1_000_000)],
    ids=["whole", "streamed"])
def test_a_value_shorter_than_its_length_is_never_answered_well_formed(
        tmp_path: Path, declared: int, present: int) -> None:
    client, collected = _client(_object(declared, present), tmp_path)
    with (pytest.raises(OSError, match="shorter than its length"),
          client.stream("GET", PATH + "/bulkdata/7FE00010", headers={"Accept": OCTETS})
          as answer):
        for _ in answer.iter_bytes():
            pass
    assert _events(collected)[-1] == ("110104", 4)
    assert "instances=0; failed=1" in collected.entries[-1].xml


@pytest.mark.parametrize("resource,call", [("/rendered", "render"),
                                           ("/frames/1/rendered", "render"),
                                           ("/thumbnail", "thumbnail")])
def test_a_rendering_that_fails_unexpectedly_is_recorded_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resource: str, call: str,
) -> None:
    """Not a refusal of render/ (a bug, or a library's error it did not expect): still a
    500 logged as such, and the transfer begun is recorded as failed, not left open."""
    def fails(*args: object, **kwargs: object) -> bytes:
        raise ZeroDivisionError("unexpected")

    monkeypatch.setattr(f"mimic_server.render.{call}", fails)
    client, collected = _client(_object(1000, 1000), tmp_path)
    with pytest.raises(ZeroDivisionError):
        client.get(PATH + resource, headers={"Accept": "image/jpeg"})
    assert _events(collected) == [("110102", 0), ("110104", 4)]


def test_a_retrieve_s_records_name_its_patient(tmp_path: Path) -> None:
    """Begin Transferring and DICOM Instances Transferred name the patient of what they
    transfer (PS3.15 A.5.3.3, A.5.3.4: mandatory, one per message), as C-GET's do: WADO-RS's
    named none."""
    data = _object(1000, 1000)
    store = MemoryStore()
    key = new_object_key(STUDY, SERIES, UID)
    store.objects[key] = data
    ref = InstanceRef("1.2.840.10008.5.1.4.1.1.7", UID, EXPLICIT, key,
                      hashlib.sha256(data).hexdigest(), study_instance_uid=STUDY,
                      patient_id="PID-7", patient_name="DOE^JANE")
    collected = Collected()
    ctx = web_context(store, InstanceFinder(ref), tmp_path / "spool",
                      audit=AuditLog(None, sinks=[collected]))
    answer = TestClient(build_dicomweb(ctx)).get(PATH + "/bulkdata/7FE00010",
                                                 headers={"Accept": OCTETS})
    assert answer.status_code == 200
    assert _events(collected) == [("110102", 0), ("110104", 0)]
    for entry in collected.entries:
        assert 'ParticipantObjectID="PID-7"' in entry.xml
        assert "<ParticipantObjectName>DOE^JANE</ParticipantObjectName>" in entry.xml
