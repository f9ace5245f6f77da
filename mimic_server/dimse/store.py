"""Storage Service Class SCP (C-STORE), DICOM PS3.4 Annex B: the DIMSE adapter of ingest.

What is DIMSE's is here: the policy check, the command's UIDs, the association's counts and
the status answered. Keeping the object is the archive's (``archive/ingest.py``, shared with
STOW-RS): put in the store, indexed in one transaction (with its audit record where the trail
is the index's table, ``store_audit``), and only then is Success sent; if indexing fails the
new object is deleted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from mimic_server.archive.ingest import check_declared_uids, ingest
from mimic_server.dimse.received import received_from_event
from mimic_server.dimse.receiving import release_spool
from mimic_server.dimse.session import session_of
from mimic_server.dimse.store_audit import (
    counted_failed,
    counted_stored,
    prepare_stored,
    record_late,
)
from mimic_server.errors import DicomStatusError, NotAuthorized, Status
from mimic_server.security.policy import Policy, Service

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from mimic_server.index import Index
    from mimic_server.security.audit import AuditLog
    from mimic_server.security.audit_journal import Journals
    from mimic_server.storage import ObjectStore

log = logging.getLogger(__name__)


def handle_store(
    event: Event, store: ObjectStore, index: Index, policy: Policy,
    audit_log: AuditLog | None = None, journals: Journals | None = None,
) -> int | Dataset:
    """Handle ``evt.EVT_C_STORE``: keep the object as received, then index it (with its
    audit record, where ``audit_log`` writes in the index transaction; else journaled in
    ``journals`` before Success goes out, for the records of its association's end).

    Returns
    -------
    int or Dataset
        ``0x0000`` Success, or a failure with an Error Comment: ``0x0124`` Not Authorized,
        ``0xA700`` Out of Resources (store or index unavailable, or a data set larger than
        ``MIMIC_MAX_OBJECT_BYTES``), ``0xA900`` Data Set does
        not match SOP Class, ``0xC000`` cannot parse, ``0xC001`` UID differs from the
        command, ``0xC002`` required attribute missing or invalid, ``0xC003`` its study
        filed under another Patient ID or its series under another study.
    """
    session = session_of(event.assoc)
    request = event.request
    sop_class_uid = str(request.AffectedSOPClassUID or "")
    try:
        if session is None or not policy.may(session, Service.STORE):
            raise NotAuthorized("C-STORE is not granted to this certificate")
        sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
        check_declared_uids(sop_class_uid, sop_instance_uid)
        if event.context.abstract_syntax != sop_class_uid:
            # PS3.7 9.3.1: a request goes on a context of its SOP Class. Taken on another
            # (the Verification context, say), it was stored under that context's transfer
            # syntax and past the storage contexts the archive chose to accept.
            raise DicomStatusError("the request's SOP Class is not its presentation "
                                   "context's", Status.SOP_CLASS_NOT_SUPPORTED)
        received = received_from_event(event, session.calling_ae_title)
        size = received.size  # before its spool (and the map its data set is read through) goes
        attrs = ingest(
            store, index, received,
            sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid,
            received_from=session.identity.label,
            audit_record=lambda attrs: prepare_stored(audit_log, session, attrs),
        )
    except DicomStatusError as exc:
        late = session is not None and not counted_failed(session, journals)
        log.warning(
            "C-STORE refused",
            extra={"status": f"0x{exc.status:04X}", "reason": str(exc), "sop_class": sop_class_uid},
            exc_info=exc.__cause__ is not None and log.isEnabledFor(logging.DEBUG),
        )
        if late:
            assert session is not None
            record_late(audit_log, session, None, sop_class_uid, int(exc.status))
        return _failure(exc)
    finally:
        release_spool(request.DataSet)  # now, not when the request is collected
    if not counted_stored(session, journals, size, attrs, sop_class_uid):
        record_late(audit_log, session, attrs, sop_class_uid, Status.SUCCESS)
    return Status.SUCCESS


def _failure(exc: DicomStatusError) -> Dataset:
    answer = Dataset()
    answer.Status = int(exc.status)
    answer.ErrorComment = str(exc)[:64]
    return answer
