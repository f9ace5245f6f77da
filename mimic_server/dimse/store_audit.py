"""The audit records of C-STORE (DICOM Instances Transferred, PS3.15 A.5.3.8): the sender
as an association names it. The records themselves are built by the protocol-neutral
``archive/ingest_audit.py``: in the table configuration one per instance, in its index
transaction; in the file configuration one per study when the association closes
(``association.handle_conn_close``), each instance journaled as it is acknowledged
(``security/audit_journal.py``) for the records of an association whose end never comes.

A C-STORE can complete after its association's end: the peer aborts, or the connection
drops, while the object is being put or indexed (the end runs on the DUL thread, the
C-STORE on the association thread). The object is kept all the same, so it is recorded all
the same: the end and each C-STORE's count meet under the session's lock, and the C-STORE
that finds the end's records written writes its own, at once (:func:`record_late`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mimic_server.archive.ingest_audit import per_instance, prepare_received
from mimic_server.security import audit
from mimic_server.security.audit_journal import record_received

if TYPE_CHECKING:
    from mimic_server.dimse.session import Session
    from mimic_server.index.attributes import InstanceAttributes
    from mimic_server.security.audit import AuditLog, Prepared
    from mimic_server.security.audit_journal import Journal, Journals

__all__ = ["counted_failed", "counted_stored", "journal_failed", "journal_stored",
           "per_instance", "prepare_stored", "record_late", "requestor"]

log = logging.getLogger(__name__)


def requestor(session: Session) -> dict[str, Any]:
    """The sender as the audit records of its stores name it."""
    return {
        "peer": session.peer_address, "identity": session.identity.label,
        "trust_name": session.identity.trust_name, "calling_ae": session.calling_ae_title,
        "called_ae": session.called_ae_title, "service": "C-STORE",
        "user": session.user.name if session.user is not None else None,
    }


def prepare_stored(audit_log: AuditLog | None, session: Session,
                   attrs: InstanceAttributes) -> Prepared | None:
    """The Instances Transferred (received) of one C-STORE, to be written in its index
    transaction; None where the trail records per association instead."""
    return prepare_received(audit_log, attrs, requestor(session))


def counted_stored(session: Session, journals: Journals | None, size: int,
                   attrs: InstanceAttributes, sop_class_uid: str) -> bool:
    """Count an instance indexed and about to be answered Success, and journal it; False
    when its association's end has written its records already (nothing counted, nothing
    journaled: :func:`record_late` is the caller's). Under the session's lock, which the
    end holds while it writes them: either the end's records count this instance, or it
    finds them written; never both, never neither (and no journal is made after the end,
    which nothing would end)."""
    with session.lock:
        if session.ended:
            return False
        session.count_stored_locked(size, attrs.study_instance_uid, sop_class_uid,
                                    (attrs.patient_id, attrs.patient_name))
        if journals is not None:
            journal_stored(session, journals, attrs, sop_class_uid)
    return True


def counted_failed(session: Session, journals: Journals | None) -> bool:
    """:func:`counted_stored` for a failed C-STORE: its count, journaled."""
    with session.lock:
        if session.ended:
            return False
        session.failed += 1
        journal_failed(session, journals)
    return True


def record_late(audit_log: AuditLog | None, session: Session,
                attrs: InstanceAttributes | None, sop_class_uid: str, status: int) -> None:
    """The record of a C-STORE that completed after its association's end had written the
    association's records: the instance kept (``attrs``), which the peer never saw
    answered, or a failure (None). Its own Instances Transferred, as the end would have
    counted it, naming its SOP Instance; where the index's table records each instance in
    its transaction (PostgreSQL) that is done, and only a failure is written here. Not
    tagged with the association's journal id: a recovery of a journal the end kept (a sink
    failed) must not take this record for one of the end's."""
    log.info("C-STORE completed after its association ended", extra={
        "peer": session.peer_address, "identity": session.identity.label,
        "calling_ae": session.calling_ae_title, "status": f"0x{status:04X}",
    })
    if audit_log is None:
        return
    if attrs is None:
        audit_log.record(audit.INSTANCES_TRANSFERRED, audit.MINOR_FAILURE, received=True,
                         instances=0, failed=1, **requestor(session))
        return
    if per_instance(audit_log):
        return
    study, patient = attrs.study_instance_uid, (attrs.patient_id, attrs.patient_name)
    record_received(audit_log, requestor(session), {study: {sop_class_uid: 1}},
                    {study: patient}, 1, 0,
                    sop_instances={study: {sop_class_uid: [attrs.sop_instance_uid]}})


def journal_stored(session: Session, journals: Journals | None,
                   attrs: InstanceAttributes, sop_class_uid: str) -> None:
    """Journal an instance indexed and about to be answered Success (file trail only)."""
    journal = session.journal or _journal(session, journals)
    if journal is not None:
        journal.stored(attrs.study_instance_uid, sop_class_uid, attrs.sop_instance_uid,
                       attrs.patient_id, attrs.patient_name)


def journal_failed(session: Session, journals: Journals | None) -> None:
    """Journal a failed C-STORE: the records' outcome and count say it."""
    journal = session.journal or _journal(session, journals)
    if journal is not None:
        journal.failed()


def _journal(session: Session, journals: Journals | None) -> Journal | None:
    if journals is None:
        return None
    session.journal = journals.open(requestor(session))
    return session.journal
