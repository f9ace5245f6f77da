"""Association admission and the per-association log line (PS3.8 A-ASSOCIATE, PS3.7 D.3).

``handle_requested`` runs when the A-ASSOCIATE-RQ arrives, after the TLS layer has verified
the peer: it applies the policy and the association limit and answers A-ASSOCIATE-RJ with the
DICOM reason. ``handle_conn_close`` writes one log line and one audit record per association.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from pynetdicom.pdu_primitives import A_RELEASE

from mimic_server.dimse import access, store_audit
from mimic_server.dimse.protocol_version import refused_version
from mimic_server.dimse.session import Session, attach_session, session_of
from mimic_server.security import audit
from mimic_server.security.audit_journal import record_received
from mimic_server.security.identity import ANONYMOUS, peer_identity
from mimic_server.security.policy import Policy, Refusal

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

    from mimic_server.security.audit import AuditLog
    from mimic_server.security.user_identity import UserAuthority

log = logging.getLogger(__name__)

#: A-ASSOCIATE-RJ (result, source, reason/diagnostic), PS3.8 Table 9-21.
REJECT: dict[Refusal, tuple[int, int, int]] = {
    Refusal.CALLING_AE_TITLE_NOT_RECOGNIZED: (0x01, 0x01, 0x03),
    Refusal.CALLED_AE_TITLE_NOT_RECOGNIZED: (0x01, 0x01, 0x07),
    Refusal.LOCAL_LIMIT_EXCEEDED: (0x02, 0x03, 0x02),
    # Permanent, service-user, no reason given: nothing proposed is granted to this peer.
    Refusal.NO_GRANTED_SERVICE: (0x01, 0x01, 0x01),
    # Permanent, service-provider (ACSE), no reason given: PS3.7 D.3.3.7 for a user
    # identity that fails authorization.
    Refusal.USER_REQUIRED: (0x01, 0x02, 0x01),
    Refusal.USER_NOT_ACCEPTED: (0x01, 0x02, 0x01),
    # Permanent, service-user, no reason given: as for a certificate refused at TLS time.
    Refusal.CERTIFICATE_NO_LONGER_TRUSTED: (0x01, 0x01, 0x01),
    # Permanent, service-user, no reason given: as for a request none of whose contexts is
    # granted, of which this is the empty case.
    Refusal.NO_PRESENTATION_CONTEXT: (0x01, 0x01, 0x01),
    # Permanent, service-provider (ACSE), protocol-version-not-supported: what pynetdicom's
    # state machine answered itself, unlogged (dimse/protocol_version.py).
    Refusal.PROTOCOL_VERSION_NOT_SUPPORTED: (0x01, 0x02, 0x02),
}
#: Refusals that access.admit has audited already (with the user's details).
_AUDITED = frozenset({Refusal.NO_GRANTED_SERVICE, Refusal.USER_REQUIRED,
                      Refusal.USER_NOT_ACCEPTED})


class AssociationSlots(Protocol):
    """The limited association slots (MIMIC_MAX_ASSOCIATIONS): the listener's."""

    def take(self, assoc: Any) -> bool:
        """Claim a slot for ``assoc``; False when none is free."""

    def give_back(self, assoc: Any) -> None:
        """Free the slot ``assoc`` claimed (it was refused for another reason)."""


def handle_requested(
    event: Event,
    policy: Policy,
    slots: AssociationSlots,
    audit_log: AuditLog,
    users: UserAuthority | None = None,
) -> None:
    """Handle ``evt.EVT_REQUESTED``: accept (return) or send A-ASSOCIATE-RJ.

    pynetdicom swallows a notification handler's exceptions, which here would accept an
    association without a session: any error rejects instead (transient, no reason given).
    """
    try:
        _admit(event, policy, slots, audit_log, users)
    except Exception:
        log.exception("association admission failed; rejecting")
        event.assoc.acse.send_reject(0x02, 0x01, 0x01)
        _wait_until_sent(event.assoc)


def _admit(
    event: Event,
    policy: Policy,
    slots: AssociationSlots,
    audit_log: AuditLog,
    users: UserAuthority | None,
) -> None:
    assoc = event.assoc
    primitive = assoc.requestor.primitive
    calling = str(primitive.calling_ae_title).strip()
    called = str(primitive.called_ae_title).strip()
    address = f"{assoc.requestor.address}:{assoc.requestor.port}"
    identity = peer_identity(assoc)
    if identity is None:  # the connection was admitted without identity: never accept
        assoc.abort()
        return
    if _withdrawn(assoc, address, identity.label, calling):
        return
    refusal = None
    if refused_version(assoc) is not None:  # before anything the request says is weighed
        refusal = Refusal.PROTOCOL_VERSION_NOT_SUPPORTED
    trust = getattr(getattr(assoc, "_server", None), "trust", None)
    if (refusal is None and trust is not None and identity is not ANONYMOUS
            and not trust.still_trusts(identity)):
        # Revoked since its handshake identified it: a trust change applied before this
        # association's thread existed was not seen by that change's sweep of them.
        refusal = Refusal.CERTIFICATE_NO_LONGER_TRUSTED
    refusal = refusal or policy.refuse_association(identity, calling, called)
    if refusal is None and not primitive.presentation_context_definition_list:
        # PS3.8 9.3.2: one or more Presentation Context items. Accepted, such a request
        # held an association slot with nothing it could ever be used for, until the
        # network timeout; "none of the proposed contexts granted" let it through, as
        # nothing was refused either.
        refusal = Refusal.NO_PRESENTATION_CONTEXT
    if refusal is None and not slots.take(assoc):
        if _withdrawn(assoc, address, identity.label, calling):
            return  # no slot for a connection that is gone: not the limit
        refusal = Refusal.LOCAL_LIMIT_EXCEEDED
    session = Session(identity, calling, address, called)
    if refusal is None:
        refusal = access.admit(assoc, session, policy, users, audit_log)
        if refusal is not None:
            slots.give_back(assoc)
    if refusal is not None:
        result, source, reason = REJECT[refusal]
        log.warning(
            "association rejected",
            extra={
                "peer": address, "identity": identity.label, "calling_ae": calling,
                "called_ae": called, "reason": refusal.value,
                "reject": f"{result}/{source}/{reason}",
            },
        )
        if refusal not in _AUDITED:
            audit_log.record(
                audit.USER_AUTHENTICATION, audit.MINOR_FAILURE, peer=address,
                identity=identity.label, calling_ae=calling, called_ae=called,
                reason=refusal.value, trust_name=identity.trust_name, event_type="login",
            )
        assoc.acse.send_reject(result, source, reason)
        _wait_until_sent(assoc)
        return
    attach_session(assoc, session)
    if session.user is None:  # a user's login was recorded by access.admit, with the user
        audit_log.record(
            audit.USER_AUTHENTICATION, audit.SUCCESS, peer=address, identity=identity.label,
            trust_name=identity.trust_name, calling_ae=calling, called_ae=called,
            event_type="login",
        )


#: The DUL's states once a requestor has left before its A-ASSOCIATE-RQ was answered: an
#: A-ABORT or a closed connection (AA-3, AA-4: Sta1), an A-RELEASE-RQ (AA-8: Sta13). Not
#: "anything but Sta3": pynetdicom hands the request to this thread from AE-6 and only then
#: moves the state machine to Sta3, so a request read at once still shows Sta2, and was
#: taken for withdrawn and aborted (a storescu under load saw "Peer aborted Association").
_REQUESTOR_GONE = frozenset({"Sta1", "Sta13"})


def _withdrawn(assoc: Association, address: str, label: str, calling: str) -> bool:
    """Whether the requestor has left before its A-ASSOCIATE-RQ was answered (it sent an
    A-ABORT or an A-RELEASE-RQ, or closed the connection): then nothing is answered, and
    the association ends as the abort it is.

    Taken for a refusal, it was one: a connection that is gone gets no association slot,
    and each such request was logged and audited as rejected for "too many simultaneous
    associations" (2/3/2) and counted as a rejection, on an idle archive; the
    A-ASSOCIATE-RJ then went to a state machine that no longer expected it."""
    if assoc.dul.state_machine.current_state not in _REQUESTOR_GONE:
        return False
    assoc.is_aborted = True  # pynetdicom then negotiates nothing and closes the connection
    log.info("association request withdrawn before it was answered",
             extra={"peer": address, "identity": label, "calling_ae": calling})
    return True


#: Query/Retrieve SOP Classes for which we accept relational queries (PS3.4 C.5.1).
RELATIONAL_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1",
        "1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2",
        "1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3",
    }
)


def handle_sop_extended(event: Event) -> dict[str, bytes]:
    """Handle ``evt.EVT_SOP_EXTENDED``: accept relational queries where they are asked for."""
    session = session_of(event.assoc)
    accepted: dict[str, bytes] = {}
    for sop_class, info in (event.app_info or {}).items():
        uid = str(sop_class)
        if uid in RELATIONAL_CLASSES and info and info[0] == 1:
            accepted[uid] = b"\x01"
            if session is not None:
                session.relational_classes.add(uid)
    return accepted


def handle_acse_sent(event: Event) -> None:
    """Handle ``evt.EVT_ACSE_SENT``: an A-RELEASE response about to go out (the peer's
    release) marks the association released.

    Not ``assoc.is_aborted`` when the connection closes: pynetdicom's DUL thread closes it
    (``EVT_CONN_CLOSE``) before the association thread has noted a peer's A-ABORT, so every
    abort read as a release. Nor only ``EVT_RELEASED``: the association thread fires it
    after it has queued the A-RELEASE-RP, which the DUL thread may have sent, and the peer
    answered by closing, before. This fires before the response is queued, so before the
    peer can close in answer to it. No release seen is an abort (A-ABORT, A-P-ABORT, the
    connection dropped)."""
    primitive = event.primitive
    if type(primitive) is A_RELEASE and primitive.result is not None:
        _mark_released(event)


def handle_released(event: Event) -> None:
    """Handle ``evt.EVT_RELEASED``: a release the archive asked for is one too."""
    _mark_released(event)


def _mark_released(event: Event) -> None:
    session = session_of(event.assoc)
    if session is not None:
        session.released = True


def handle_conn_close(event: Event, audit_log: AuditLog) -> None:
    """Handle ``evt.EVT_CONN_CLOSE``: one line per association that was accepted."""
    assoc = event.assoc
    session = session_of(assoc)
    if session is None:
        return
    _record_stores(session, audit_log)
    outcome = "released" if session.released else "aborted"
    if session.user is not None:
        audit_log.record(
            audit.USER_AUTHENTICATION, audit.SUCCESS, event_type="logout",
            peer=session.peer_address, identity=session.identity.label,
            trust_name=session.identity.trust_name, calling_ae=session.calling_ae_title,
            called_ae=session.called_ae_title, user=session.user.name, reason=outcome,
        )
    # After the audit records: once this line is logged, they are written (committed).
    log.info(
        "association closed",
        extra={
            "peer": session.peer_address, "identity": session.identity.label,
            "calling_ae": session.calling_ae_title, "outcome": outcome,
            "stored": session.stored, "failed": session.failed, "bytes": session.bytes_stored,
            "seconds": round(time.monotonic() - session.started, 3),
        },
    )


def _record_stores(session: Session, audit_log: AuditLog) -> None:
    """The file configuration: one DICOM Instances Transferred per study received, at the end
    of the association, tagged with its journal's id; then the journal goes (kept when a
    record could not be written: a recovery writes what is missing). The table
    configuration wrote one per instance in its index transaction (store_audit.py): here
    only the failures, which indexed nothing (see docs/architecture.md, "Logging vs
    audit").

    Under the session's lock, marked ``ended``: a C-STORE still being stored or indexed
    (the peer aborted meanwhile) is either counted here or, completing after, writes its
    own record (``store_audit.record_late``); the lock is held while the records are
    written so that it is never both."""
    requestor = store_audit.requestor(session)
    with session.lock:
        if session.ended:
            return
        session.ended = True
        if store_audit.per_instance(audit_log):
            if session.failed:
                audit_log.record(audit.INSTANCES_TRANSFERRED, audit.MINOR_FAILURE,
                                 received=True, instances=session.stored,
                                 failed=session.failed, **requestor)
            return
        journal = session.journal
        failures = audit_log.failures
        record_received(audit_log, requestor, session.study_classes, session.study_patients,
                        session.stored, session.failed,
                        association=journal.association if journal is not None else None)
        if journal is not None:
            journal.end(keep=audit_log.failures != failures)


#: How long a rejecting handler waits for the DUL thread to put its A-ASSOCIATE-RJ on the
#: wire. When the handler returns, the association thread stops the DUL thread, and a DUL
#: thread stopped before it sent the RJ closes the connection without it: the peer sees the
#: connection drop (an abort), not the rejection and its reason. It takes milliseconds; with
#: 6 and 16 busy Python threads beside it, 0.15 and 0.49 s (medians), once more than the 1 s
#: this limit used to be. The ARTIM timer's default, as a bound only.
REJECT_SEND_LIMIT = 30.0


def _wait_until_sent(assoc: Association, limit: float = REJECT_SEND_LIMIT) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if assoc.dul.state_machine.current_state in ("Sta13", "Sta1"):  # sent, or closed
            time.sleep(0.05)
            return
        if not assoc.dul.is_alive():  # ended (an error, a stop): it will send nothing
            return
        time.sleep(0.005)
    log.warning("the A-ASSOCIATE-RJ was not sent within %.0f s: the association ends "
                "without it", limit)
