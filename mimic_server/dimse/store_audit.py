"""The audit records of C-STORE (DICOM Instances Transferred, PS3.15 A.5.3.8): the sender
as an association names it. The records themselves are built by the protocol-neutral
``archive/ingest_audit.py``: in the table configuration one per instance, in its index
transaction; in the file configuration one per study when the association closes
(``association.handle_conn_close``), each instance journaled as it is acknowledged
(``security/audit_journal.py``) for the records of an association whose end never comes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mimic_server.archive.ingest_audit import per_instance, prepare_received

if TYPE_CHECKING:
    from mimic_server.dimse.session import Session
    from mimic_server.index.attributes import InstanceAttributes
    from mimic_server.security.audit import AuditLog, Prepared
    from mimic_server.security.audit_journal import Journal, Journals

__all__ = ["journal_failed", "journal_stored", "per_instance", "prepare_stored", "requestor"]


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
