"""What a WADO-RS URL names (a study, a series or an instance) as the instances to read,
found like a C-GET's (``Finder.instances`` over a retrieve Identifier), and the audit of
what was sent (Begin Transferring, DICOM Instances Transferred: as for C-GET, with the
requestor as destination)."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from mimic_server.errors import QueryError
from mimic_server.query.finder import InstanceRef
from mimic_server.query.identifier import parse
from mimic_server.query.keys import Level, Model
from mimic_server.security import audit
from mimic_server.security.transfer_tally import (
    Patient,
    TransferTally,
    by_patient,
    failed_in,
    patient_of,
)
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
    """Begin Transferring before the first byte, DICOM Instances Transferred at the end; each
    one per patient when the instances are several patients' (PS3.15 A.5.3.3, A.5.3.4: one
    patient per message; ``security.transfer_tally``)."""

    def __init__(self, ctx: DicomWebContext, session: WebSession, resource: str) -> None:
        self.ctx = ctx
        self.details: dict[str, Any] = {
            "service": "WADO-RS", "resource": resource, **session.audit_details(),
            "called_ae": ctx.ae_title,
        }
        #: What was sent and failed, per patient as the index files them.
        self.tally = TransferTally()
        #: The one patient of what began (a failure named by no ref is that patient's).
        self.only: Patient | None = None
        self.ended = False

    def begin(self, refs: list[InstanceRef]) -> None:
        groups = by_patient(refs)
        self.only = next(iter(groups)) if len(groups) == 1 else None
        for (patient_id, patient_name), mine in groups.items():
            studies: dict[str, dict[str, int]] = {}
            for ref in mine:
                classes = studies.setdefault(study_of_key(ref.object_key) or "unknown", {})
                classes[ref.sop_class_uid] = classes.get(ref.sop_class_uid, 0) + 1
            self.ctx.audit.record(
                audit.BEGIN_TRANSFERRING, audit.SUCCESS, instances=len(mine), studies=studies,
                patient_id=patient_id, patient_name=patient_name, **self.details,
            )

    def sent_one(self, ref: InstanceRef) -> None:
        self.tally.sent_one(patient_of(ref), study_of_key(ref.object_key) or "unknown",
                            ref.sop_class_uid)

    def failed_one(self, ref: InstanceRef | None = None) -> None:
        """One instance not sent; ``ref``: which, to count it with its patient. Without it,
        the one patient of what began; else (several, or none begun) no patient: a retrieve
        of several patients records it as ``failed_patient_unknown``."""
        self.tally.failed_one(patient_of(ref) if ref is not None else self.only)

    def end(self, completed: bool = True) -> None:
        if self.ended:
            return
        self.ended = True
        if not self.tally.total_sent and not self.tally.total_failed and completed:
            return
        for record in self.tally.records():
            outcome = audit.SUCCESS if completed and not failed_in(record) else (
                audit.MINOR_FAILURE)
            if record["patient_id"] is None and record["patient_name"] is None:
                del record["patient_id"], record["patient_name"]  # none known: none named
            self.ctx.audit.record(audit.INSTANCES_TRANSFERRED, outcome, received=False,
                                  **record, **self.details)
