"""What a retrieve sent and failed, per patient, for its audit records.

PS3.15 A.5.3.3 (Begin Transferring DICOM Instances) and A.5.3.4 (DICOM Instances
Transferred) make the Patient a mandatory participant object and let one message carry one
patient only. A C-GET, C-MOVE or WADO-RS retrieve may match the instances of several patients
(a list of Study Instance UIDs, a Patient ID matched in several issuers): its messages named
no patient at all. They are now one per patient, each with that patient's studies, SOP
Classes and counts. A retrieve of one patient's instances is recorded as before, in one
message. Shared by the DIMSE retrieves (``dimse/audited.py``) and WADO-RS
(``web/dicomweb/retrieve.py``), so that both split a retrieve the same way.

A patient is ``(Patient ID, Patient's Name)`` as the index files the instance: no object sent
is parsed for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol, TypeVar

#: (Patient ID, Patient's Name) as the index files them.
Patient = tuple[str, str]


class Indexed(Protocol):
    """What the tally reads of an index row (``query.finder.InstanceRef``)."""

    sop_class_uid: str
    sop_instance_uid: str
    patient_id: str
    patient_name: str


def patient_of(row: Indexed) -> Patient:
    return (row.patient_id, row.patient_name)


_Row = TypeVar("_Row", bound=Indexed)


def by_patient(rows: Iterable[_Row]) -> dict[Patient, list[_Row]]:
    """``rows`` grouped by patient, in the order their patients first appear: one Begin
    Transferring per group."""
    groups: dict[Patient, list[_Row]] = {}
    for row in rows:
        groups.setdefault(patient_of(row), []).append(row)
    return groups


def patient_details(patient: Patient | None) -> dict[str, Any]:
    """The record details naming ``patient`` (None: none, as a record of no instance)."""
    return {"patient_id": patient[0] if patient else None,
            "patient_name": patient[1] if patient else None}


class TransferTally:
    """The instances a retrieve sent (per patient, study and SOP Class) and failed (per
    patient where known). A failure whose patient is not known (an instance that is not in
    the match list, which the callers never send) is counted apart: it is not put on a
    patient it may not be of."""

    __slots__ = ("failed", "sent", "unattributed")

    def __init__(self) -> None:
        self.sent: dict[Patient, dict[str, Counter[str]]] = {}
        self.failed: Counter[Patient] = Counter()
        self.unattributed = 0

    def sent_one(self, patient: Patient, study: str, sop_class_uid: str) -> None:
        self.sent.setdefault(patient, {}).setdefault(study, Counter())[sop_class_uid] += 1

    def failed_one(self, patient: Patient | None) -> None:
        if patient is None:
            self.unattributed += 1
        else:
            self.failed[patient] += 1

    @property
    def total_sent(self) -> int:
        return sum(sum(c.values()) for studies in self.sent.values() for c in studies.values())

    @property
    def total_failed(self) -> int:
        return self.failed.total() + self.unattributed

    def records(self) -> list[dict[str, Any]]:
        """The details of each DICOM Instances Transferred: ``studies``
        (``{study: {SOP Class: count}}``), ``instances``, ``failed``, the patient. One record
        when the instances are one patient's (or none's known): every failure is counted
        there, as before. Else one per patient, with its own failures; those of no known
        patient are ``failed_patient_unknown=`` in each (each message then says the
        retrieve had failures it could not place, and none is counted twice in ``failed=``)."""
        # In the order they were first sent, then failed (a Patient ID may be None: no sort).
        patients = list(dict.fromkeys([*self.sent, *self.failed]))
        if len(patients) <= 1:
            patient = patients[0] if patients else None
            return [{"studies": self._studies(patient), "instances": self.total_sent,
                     "failed": self.total_failed, **patient_details(patient)}]
        records = []
        for patient in patients:
            studies = self._studies(patient)
            record = {"studies": studies,
                      "instances": sum(sum(c.values()) for c in studies.values()),
                      "failed": self.failed[patient], **patient_details(patient)}
            if self.unattributed:
                record["failed_patient_unknown"] = self.unattributed
            records.append(record)
        return records

    def _studies(self, patient: Patient | None) -> dict[str, dict[str, int]]:
        studies = self.sent.get(patient, {}) if patient is not None else {}
        return {uid: dict(classes) for uid, classes in studies.items()}


def failed_in(record: dict[str, Any]) -> bool:
    """Whether a record of :meth:`TransferTally.records` counts a failure (its outcome is
    then at least 4)."""
    return bool(record["failed"] or record.get("failed_patient_unknown"))
