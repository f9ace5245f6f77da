"""What a WADO-RS URL names (a study, a series or an instance) as the instances to read,
found like a C-GET's (``Finder.instances`` over a retrieve Identifier), and the audit of
what was sent (Begin Transferring, DICOM Instances Transferred: as for C-GET, with the
requestor as destination)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydicom.dataset import Dataset

from mimic_server.errors import QueryError
from mimic_server.query.finder import InstanceRef
from mimic_server.query.identifier import parse
from mimic_server.query.keys import Level, Model
from mimic_server.security import audit
from mimic_server.storage.keys import study_of_key
from mimic_server.web.dicomweb.auth import WebSession
from mimic_server.web.dicomweb.context import DicomWebContext
from mimic_server.web.dicomweb.errors import WebError

_UID_CHARS = frozenset("0123456789.")


def check_uid(uid: str) -> str:
    """A UID of the path: digits and dots, 1 to 64 characters (PS3.5 9.1). Every route
    naming an entity by path checks it (WADO-RS, QIDO-RS): a wildcard or a list there would
    widen the request to other entities."""
    if not uid or len(uid) > 64 or not set(uid) <= _UID_CHARS:
        raise WebError(400, "not a UID in the path")
    return uid


def instances(ctx: DicomWebContext, study: str, series: str | None = None,
              instance: str | None = None) -> list[InstanceRef]:
    """The stored instances under the named entity; 404 when there are none."""
    if series is not None and instance is not None:
        # One instance: the index's direct lookup (the same match, without building a
        # retrieve Identifier and its SQL statement for each request).
        uids = check_uid(study), check_uid(series), check_uid(instance)
        try:
            refs = ctx.finder.instance(*uids)
        except Exception as exc:  # the index: OutOfResources
            raise WebError(503, "index unavailable") from exc
        if not refs:
            raise WebError(404, "no such image")
        return refs
    identifier = Dataset()
    identifier.StudyInstanceUID = check_uid(study)
    level = Level.STUDY
    if series is not None:
        identifier.SeriesInstanceUID = check_uid(series)
        level = Level.SERIES
    if instance is not None:
        identifier.SOPInstanceUID = check_uid(instance)
        level = Level.IMAGE
    identifier.QueryRetrieveLevel = level.value
    try:
        query = parse(identifier, Model.STUDY_ROOT, relational=False, retrieve=True)
    except QueryError as exc:
        raise WebError(400, str(exc)) from exc
    try:
        refs = ctx.finder.instances(query)
    except Exception as exc:  # the index: OutOfResources
        raise WebError(503, "index unavailable") from exc
    if not refs:
        raise WebError(404, f"no such {level.value.lower()}")
    return refs


class TransferAudit:
    """Begin Transferring before the first byte, DICOM Instances Transferred at the end."""

    def __init__(self, ctx: DicomWebContext, session: WebSession, resource: str) -> None:
        self.ctx = ctx
        self.details: dict[str, Any] = {
            "service": "WADO-RS", "resource": resource, **session.audit_details(),
            "called_ae": ctx.ae_title,
        }
        self.sent: dict[str, Counter[str]] = {}
        #: The patients (ID, name) of what was sent, as the index files them.
        self.patients: set[tuple[str, str]] = set()
        self.failed = 0
        self.ended = False

    def begin(self, refs: list[InstanceRef]) -> None:
        studies: dict[str, Counter[str]] = {}
        for ref in refs:
            study = study_of_key(ref.object_key) or "unknown"
            studies.setdefault(study, Counter())[ref.sop_class_uid] += 1
        self.ctx.audit.record(
            audit.BEGIN_TRANSFERRING, audit.SUCCESS, instances=len(refs),
            studies={uid: dict(c) for uid, c in studies.items()},
            **_patient({(ref.patient_id, ref.patient_name) for ref in refs}), **self.details,
        )

    def sent_one(self, ref: InstanceRef) -> None:
        study = study_of_key(ref.object_key) or "unknown"
        self.sent.setdefault(study, Counter())[ref.sop_class_uid] += 1
        self.patients.add((ref.patient_id, ref.patient_name))

    def failed_one(self) -> None:
        self.failed += 1

    def end(self, completed: bool = True) -> None:
        if self.ended:
            return
        self.ended = True
        count = sum(sum(c.values()) for c in self.sent.values())
        outcome = audit.SUCCESS if completed and not self.failed else audit.MINOR_FAILURE
        if not count and not self.failed and completed:
            return
        self.ctx.audit.record(
            audit.INSTANCES_TRANSFERRED, outcome, received=False,
            studies={uid: dict(c) for uid, c in self.sent.items()}, instances=count,
            failed=self.failed, **_patient(self.patients), **self.details,
        )


def _patient(patients: set[tuple[str, str]]) -> dict[str, str]:
    """The patient as record details when the instances are one patient's (PS3.15 A.5.3.3
    and A.5.3.4 want the Patient, one per message, as C-GET's records name it); none for
    several."""
    if len(patients) != 1:
        return {}
    patient_id, patient_name = next(iter(patients))
    return {"patient_id": patient_id, "patient_name": patient_name}
