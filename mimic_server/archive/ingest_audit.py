"""The audit record of a received object (DICOM Instances Transferred, PS3.15 A.5.3.8).

Where the trail is the index database's table (the PostgreSQL configuration), each received
instance's record is built before its index upsert and written in that upsert's transaction
(``ingest.keep``): an object answered as stored always has its record, and nothing is
recorded that did not commit. Elsewhere (the file of the embedded mode) each front door
records what it received when its exchange ends: the association (C-STORE), the request
(STOW-RS). The front door names the sender (``requestor``): peer, identity, AE titles or the
HTTP client, the service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mimic_server.security import audit

if TYPE_CHECKING:
    from mimic_server.index.attributes import InstanceAttributes
    from mimic_server.security.audit import AuditLog, Prepared


def prepare_received(audit_log: AuditLog | None, attrs: InstanceAttributes,
                     requestor: dict[str, Any]) -> Prepared | None:
    """The Instances Transferred (received) of one instance, to be written in its index
    transaction; None where the trail records per exchange instead."""
    if audit_log is None or audit_log.transactional is None:
        return None
    study, sop_class = attrs.study_instance_uid, attrs.sop_class_uid
    return audit_log.prepare(
        audit.INSTANCES_TRANSFERRED, audit.SUCCESS, received=True,
        studies={study: {sop_class: 1}},
        sop_instances={study: {sop_class: (attrs.sop_instance_uid,)}},
        patient_id=attrs.patient_id, patient_name=attrs.patient_name or None,
        **requestor,
    )


def per_instance(audit_log: AuditLog) -> bool:
    """Whether each received instance writes its own record in its index transaction
    (then the end of the exchange records only its failures)."""
    return audit_log.transactional is not None
