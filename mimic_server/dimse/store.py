"""Storage Service Class SCP (C-STORE), DICOM PS3.4 Annex B.

The order is the archive's first invariant: the object is put in the store, then indexed in
one transaction, and only then is Success sent. If indexing fails the new object is deleted,
so no index row ever points at a missing object and no failure leaves a half-stored one.
Where the audit trail is the index database's table, the object's audit record is written in
that same transaction (``store_audit``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from mimic_server.dimse.received import ReceivedObject
from mimic_server.dimse.receiving import release_spool
from mimic_server.dimse.session import session_of
from mimic_server.dimse.store_audit import prepare_stored
from mimic_server.errors import (
    CannotUnderstand,
    DataSetMismatch,
    DicomStatusError,
    NotAuthorized,
    Status,
)
from mimic_server.index.attributes import InstanceAttributes, valid_uid
from mimic_server.security.policy import Policy, Service
from mimic_server.storage.keys import new_object_key

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from mimic_server.index import Index
    from mimic_server.security.audit import AuditLog, Prepared
    from mimic_server.storage import ObjectStore

log = logging.getLogger(__name__)


def handle_store(
    event: Event, store: ObjectStore, index: Index, policy: Policy,
    audit_log: AuditLog | None = None,
) -> int | Dataset:
    """Handle ``evt.EVT_C_STORE``: keep the object as received, then index it (with its
    audit record, where ``audit_log`` writes in the index transaction).

    Returns
    -------
    int or Dataset
        ``0x0000`` Success, or a failure with an Error Comment: ``0x0124`` Not Authorized,
        ``0xA700`` Out of Resources (store or index unavailable, or a data set larger than
        ``MIMIC_MAX_OBJECT_BYTES``), ``0xA900`` Data Set does
        not match SOP Class, ``0xC000`` cannot parse, ``0xC001`` UID differs from the
        command, ``0xC002`` required attribute missing or invalid.
    """
    session = session_of(event.assoc)
    request = event.request
    sop_class_uid = str(request.AffectedSOPClassUID or "")
    try:
        if session is None or not policy.may(session, Service.STORE):
            raise NotAuthorized("C-STORE is not granted to this certificate")
        sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
        if not (valid_uid(sop_instance_uid) and valid_uid(sop_class_uid)):
            raise CannotUnderstand("invalid Affected SOP UID", Status.MISSING_ATTRIBUTE)
        received = ReceivedObject.from_event(event, session.calling_ae_title)
        attrs = InstanceAttributes.from_header(received.header)
        if attrs.sop_instance_uid != sop_instance_uid:
            raise CannotUnderstand(
                "SOP Instance UID differs from the request", Status.UID_MISMATCH
            )
        if attrs.sop_class_uid != sop_class_uid:
            raise DataSetMismatch("SOP Class UID differs from the request")
        record = prepare_stored(audit_log, session, attrs)
        _keep(store, index, received, attrs, session.identity.label, record)
    except DicomStatusError as exc:
        if session is not None:
            session.count_failed()
        log.warning(
            "C-STORE refused",
            extra={"status": f"0x{exc.status:04X}", "reason": str(exc), "sop_class": sop_class_uid},
            exc_info=exc.__cause__ is not None and log.isEnabledFor(logging.DEBUG),
        )
        return _failure(exc)
    finally:
        release_spool(request.DataSet)  # now, not when the request is collected
    session.count_stored(received.size, attrs.study_instance_uid, sop_class_uid,
                         (attrs.patient_id, attrs.patient_name))
    return Status.SUCCESS


def _keep(
    store: ObjectStore,
    index: Index,
    received: ReceivedObject,
    attrs: InstanceAttributes,
    received_from: str,
    record: Prepared | None = None,
) -> None:
    key = new_object_key(
        attrs.study_instance_uid, attrs.series_instance_uid, attrs.sop_instance_uid
    )
    store.put(key, received.chunks, received.sha256)
    try:
        replaced = index.upsert_instance(
            attrs,
            transfer_syntax_uid=received.transfer_syntax_uid,
            object_key=key,
            sha256=received.sha256,
            size=received.size,
            received_from=received_from,
            in_transaction=record.write_in if record is not None else None,
        )
    except BaseException:
        _delete_quietly(store, key)
        raise
    if record is not None:
        record.committed()  # the other sinks (syslog) get it once it is in the table
    if replaced is not None and replaced != key:
        _delete_quietly(store, replaced)  # the same instance again: the newest bytes win


def _delete_quietly(store: ObjectStore, key: str) -> None:
    try:
        store.delete(key)
    except Exception:
        # An orphan object, never an index row without object: 'mimic reconcile' removes it.
        # The key holds UIDs: named at DEBUG only; 'mimic reconcile' finds the orphan anyway.
        log.error("object could not be deleted; left for reconcile")
        log.debug("undeleted object key", extra={"key": key})


def _failure(exc: DicomStatusError) -> Dataset:
    answer = Dataset()
    answer.Status = int(exc.status)
    answer.ErrorComment = str(exc)[:64]
    return answer
