"""WADO-RS transfer records of several patients' instances (``web/dicomweb/retrieve.py``):
one Begin Transferring and one DICOM Instances Transferred per patient, each naming it with
its own studies, counts and failures (PS3.15 A.5.3.3, A.5.3.4: the Patient is mandatory, one
per message). They named no patient (Begin Transferring), or only the patient of what was
sent, with another patient's failure counted on it (DICOM Instances Transferred).

The index files a study under one patient, so a WADO-RS URL (one study) names one patient's
instances; the match list here is a double's, the records are the routes' own."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

from lxml import etree
from starlette.testclient import TestClient

from mimic_server.query.finder import InstanceRef
from mimic_server.security import audit
from mimic_server.security.audit import AuditLog
from mimic_server.security.audit_message import validate
from mimic_server.security.policy import Policy
from mimic_server.storage.memory import MemoryStore
from mimic_server.web.dicomweb.app import build_dicomweb
from mimic_server.web.dicomweb.context import DicomWebContext
from mimic_server.web.dicomweb.retrieve import TransferAudit
from tests.unit.test_wado_stored_again import EXPLICIT, MULTIPART, SERIES, STUDY, Finder, _object

JANE, RICHARD = ("PID1", "DOE^JANE"), ("PID2", "ROE^RICHARD")


class Entries:
    """The audit entries written."""

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self.details: list[dict[str, Any]] = []

    def write(self, entry: Any, details: dict[str, Any]) -> None:
        validate(entry.xml)
        self.entries.append(entry)
        self.details.append(details)

    def close(self) -> None:
        pass

    def of(self, event: tuple[str, str, str]) -> list[tuple[Any, dict[str, Any]]]:
        return [(e, d) for e, d in zip(self.entries, self.details, strict=True)
                if e.event_code == event[0]]


def _patient(entry: Any) -> list[str | None]:
    message = etree.fromstring(entry.xml)
    return [o.get("ParticipantObjectID") for o in message.findall(
        "ParticipantObjectIdentification") if o.find("ParticipantObjectIDTypeCode").get(
        "csd-code") == "2"]


def _of(ref: InstanceRef, patient: tuple[str, str]) -> InstanceRef:
    return dataclasses.replace(ref, patient_id=patient[0], patient_name=patient[1])


def test_a_retrieve_of_two_patients_is_recorded_per_patient() -> None:
    """Jane's two instances are sent; Richard's one is missing from the store: his failure
    is his, not Jane's."""
    store = MemoryStore()
    refs = [_of(_object(store, f"{SERIES}.{n + 1}", EXPLICIT, f"object {n}".encode())[0], who)
            for n, who in enumerate([JANE, RICHARD, JANE])]
    del store.objects[refs[1].object_key]
    trail = Entries()
    ctx = DicomWebContext(finder=Finder(refs, {}), store=store,  # type: ignore[arg-type]
                          policy=Policy("MIMIC"), audit=AuditLog(None, sinks=[trail]),
                          tokens=None, auth="none")
    client = TestClient(build_dicomweb(ctx), raise_server_exceptions=False)
    answer = client.get(f"/studies/{STUDY}", headers={"Accept": MULTIPART})
    assert answer.status_code == 200
    begun = sorted((_patient(e), d["instances"]) for e, d in trail.of(audit.BEGIN_TRANSFERRING))
    assert begun == [(["PID1"], 2), (["PID2"], 1)]
    transferred = sorted((_patient(e), d["instances"], d["failed"], e.outcome)
                         for e, d in trail.of(audit.INSTANCES_TRANSFERRED))
    assert transferred == [(["PID1"], 2, 0, audit.SUCCESS), (["PID2"], 0, 1, audit.MINOR_FAILURE)]


def test_a_failure_of_no_known_patient_is_in_each_patients_record() -> None:
    """Not put on a patient it may not be of, nor lost: each message says it, outcome 4."""
    trail = Entries()
    ctx = SimpleNamespace(audit=AuditLog(None, sinks=[trail]), ae_title="MIMIC")
    session = SimpleNamespace(audit_details=lambda: {"peer": "127.0.0.1:4000"})
    transfer = TransferAudit(ctx, session, "instances")  # type: ignore[arg-type]
    store = MemoryStore()
    jane = _of(_object(store, f"{SERIES}.1", EXPLICIT, b"a")[0], JANE)
    richard = _of(_object(store, f"{SERIES}.2", EXPLICIT, b"b")[0], RICHARD)
    transfer.sent_one(jane)
    transfer.sent_one(richard)
    transfer.failed_one()
    transfer.end()
    records = trail.of(audit.INSTANCES_TRANSFERRED)
    assert sorted(_patient(e) for e, _ in records) == [["PID1"], ["PID2"]]
    for entry, details in records:
        assert entry.outcome == audit.MINOR_FAILURE
        assert (details["instances"], details["failed"], details["failed_patient_unknown"]) == (
            1, 0, 1)
        assert "failed_patient_unknown=1" in entry.xml
