"""Admission by the access policy: the association's user, its services, its contexts.

Runs in ``evt.EVT_REQUESTED`` (``association.handle_requested``), before pynetdicom
negotiates. pynetdicom 3.0.4 triggers ``EVT_REQUESTED`` first and ``EVT_USER_ID`` later,
inside ``ACSE._negotiate_as_acceptor``, and only when the requestor sent a User Identity item:
so the user is verified here, where a missing one can be refused too, and
:func:`handle_user_id` only reports the verdict back to pynetdicom (and the positive
response).

Presentation contexts for services the association may not use are marked on the proposed
context; the negotiation wrapper of the fence (``syntax_refusal.refusing_negotiation``) gives
them result 0x01 *user-rejection* (PS3.8 Table 9-18: the acceptor application, not the UL
provider, refuses them; 0x03 would claim the SOP Class is not supported at all, which is
false and misleads the peer's operator).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pynetdicom.pdu_primitives import UserIdentityNegotiation

from mimic_server.dimse.find import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from mimic_server.dimse.session import Session, session_of
from mimic_server.security import audit
from mimic_server.security.grants import Service, UserRequirement
from mimic_server.security.policy import Policy, Refusal
from mimic_server.security.user_identity import JWT, UserAuthority, UserRefused

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

    from mimic_server.security.audit import AuditLog

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
_SERVICES = {
    VERIFICATION: Service.ECHO,
    PATIENT_ROOT_FIND: Service.FIND, STUDY_ROOT_FIND: Service.FIND,
    PATIENT_ROOT_MOVE: Service.MOVE, STUDY_ROOT_MOVE: Service.MOVE,
    PATIENT_ROOT_GET: Service.GET, STUDY_ROOT_GET: Service.GET,
}
#: Marks a proposed presentation context that the policy refuses (read by the fence).
_REFUSED = "_mimic_refused_by_policy"
USER_REJECTION = 0x01


def service_of(abstract_syntax: str) -> Service:
    """The service a presentation context is for; every other SOP Class is storage
    (pynetdicom's unrestricted storage negotiation accepts it as such)."""
    return _SERVICES.get(abstract_syntax, Service.STORE)


def refused_by_policy(context: Any) -> bool:
    """Whether admission marked this proposed presentation context as not granted."""
    return bool(getattr(context, _REFUSED, False))


def admit(
    assoc: Association,
    session: Session,
    policy: Policy,
    users: UserAuthority | None,
    audit_log: AuditLog,
) -> Refusal | None:
    """Verify the user, fix the session's services and mark the contexts it may not use;
    return why the association is refused, or None."""
    identity = session.identity
    grants = policy.grants_for(identity)
    session.grants = grants
    item = assoc.requestor.user_identity
    if item is not None:
        try:
            user = (users or UserAuthority()).verify(
                item.user_identity_type, bytes(item.primary_field or b""),
                bytes(item.secondary_field or b""),
            )
        except UserRefused as exc:
            _audit_login(audit_log, session, audit.MINOR_FAILURE, exc.user, str(exc))
            return Refusal.USER_NOT_ACCEPTED
        session.user = user
        _audit_login(audit_log, session, audit.SUCCESS, user.name, f"verified by {user.method}")
    elif grants.user is UserRequirement.REQUIRED:
        _audit_login(audit_log, session, audit.MINOR_FAILURE, "", Refusal.USER_REQUIRED.value)
        return Refusal.USER_REQUIRED
    services = policy.services_for(grants, session.user.roles if session.user else None)
    session.services = services
    usable, refused = _mark_contexts(assoc, services)
    if refused:
        names = ",".join(sorted(s.value for s in refused))
        if not usable:
            policy.refused(session, Refusal.NO_GRANTED_SERVICE.value, service=names)
            return Refusal.NO_GRANTED_SERVICE
        policy.refused(session, "presentation contexts refused: service not granted",
                       service=names)
    return None


def _mark_contexts(
    assoc: Association, services: frozenset[Service]
) -> tuple[int, set[Service]]:
    """Mark the proposed contexts the association may not use; the number left usable and
    the services of those refused."""
    roles = assoc.requestor.role_selection
    usable = 0
    refused: set[Service] = set()
    for context in assoc.requestor.primitive.presentation_context_definition_list:
        uid = str(context.abstract_syntax)
        service = service_of(uid)
        allowed = service in services
        if not allowed and service is Service.STORE and Service.GET in services:
            # A C-GET requestor proposes storage contexts with the SCP role to receive the
            # objects: that is part of the C-GET, not a C-STORE of its own.
            role = roles.get(uid)
            allowed = role is not None and bool(role.scp_role)
        setattr(context, _REFUSED, not allowed)
        usable += allowed
        if not allowed:
            refused.add(service)
    return usable, refused


def _audit_login(
    audit_log: AuditLog, session: Session, outcome: int, user: str, reason: str
) -> None:
    details = {"user": user} if user else {}
    level = logging.INFO if outcome == audit.SUCCESS else logging.WARNING
    log.log(level, "user identity " + ("accepted" if outcome == audit.SUCCESS else "refused"),
            extra={"identity": session.identity.label, "reason": reason, **details})
    audit_log.record(
        audit.USER_AUTHENTICATION, outcome, event_type="login", peer=session.peer_address,
        identity=session.identity.label, trust_name=session.identity.trust_name,
        calling_ae=session.calling_ae_title, called_ae=session.called_ae_title,
        reason=reason, **details,
    )


def handle_user_id(event: Event) -> tuple[bool, bytes | None]:
    """Handle ``evt.EVT_USER_ID``: the verdict of admission (which ran first).

    Positive response when the requestor asked for one (PS3.7 D.3.3.7.2): for types 1 and 2
    a User Identity item with a zero-length server response, added here because pynetdicom
    answers only types 3 to 5; for a JWT also a zero-length server response: MIMIC issues no
    token of its own, and echoing the requestor's token back would only copy a credential.
    """
    session = session_of(event.assoc)
    verified = session is not None and session.user is not None
    if not verified:
        return False, None
    item = event.assoc.requestor.user_identity
    if event.user_id_type != JWT and item is not None and item.positive_response_requested:
        response = UserIdentityNegotiation()
        response.server_response = b""
        event.assoc.acceptor.add_negotiation_item(response)
    return True, b""
