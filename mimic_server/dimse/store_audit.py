"""The audit records of received objects (DICOM Instances Transferred, PS3.15 A.5.3.8).

Where the trail is the index database's table (the PostgreSQL configuration), each C-STORE's
record is built before its index upsert and written in that upsert's transaction: an object
answered Success always has its record, and nothing is recorded that did not commit, even
when the replica dies in mid-association. Elsewhere (the file of the embedded mode) the
records are written per study when the association closes (``association.handle_conn_close``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mimic_server.security import audit

if TYPE_CHECKING:
    from mimic_server.dimse.session import Session
    from mimic_server.index.attributes import InstanceAttributes
    from mimic_server.security.audit import AuditLog, Prepared


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
    """The Instances Transferred (received) of one instance, to be written in its index
    transaction; None where the trail records per association instead."""
    if audit_log is None or audit_log.transactional is None:
        return None
    study, sop_class = attrs.study_instance_uid, attrs.sop_class_uid
    return audit_log.prepare(
        audit.INSTANCES_TRANSFERRED, audit.SUCCESS, received=True,
        studies={study: {sop_class: 1}},
        sop_instances={study: {sop_class: (attrs.sop_instance_uid,)}},
        patient_id=attrs.patient_id, patient_name=attrs.patient_name or None,
        **requestor(session),
    )


def per_instance(audit_log: AuditLog) -> bool:
    """Whether each C-STORE writes its own record (then the association's end does not)."""
    return audit_log.transactional is not None
