"""The audit records of C-STORE (DICOM Instances Transferred, PS3.15 A.5.3.8): the sender
as an association names it. The records themselves are built by the protocol-neutral
``archive/ingest_audit.py``: in the table configuration one per instance, in its index
transaction; in the file configuration one per study when the association closes
(``association.handle_conn_close``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mimic_server.archive.ingest_audit import per_instance, prepare_received

if TYPE_CHECKING:
    from mimic_server.dimse.session import Session
    from mimic_server.index.attributes import InstanceAttributes
    from mimic_server.security.audit import AuditLog, Prepared

__all__ = ["per_instance", "prepare_stored", "requestor"]


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
