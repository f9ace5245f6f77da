"""Association and service policy: deny by default, decided per verified identity.

The TLS layer has already refused every peer that is not in the trusted set; this module
decides what a trusted peer may do: which AE titles it may call from and to, which DIMSE
services it may use, which Move Destinations it may name and how far it may query.

Where an identity's rule comes from (first that exists): the policy file's table for its trust
entry, the rule the entry carries itself (Key Vault tags, binding file), the policy file's
``[default]``, :data:`~mimic_server.security.grants.MODALITY`. No rule looks at the peer's IP
address: behind Azure Container Apps' TCP ingress every peer has the ingress's address.

Each refusal decided here is written to the audit trail (Security Alert) with the session's
details, so that the DIMSE handlers need one call per decision.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from pydicom.multival import MultiValue

from mimic_server.security import audit
from mimic_server.security.grants import MODALITY, Grants, Service
from mimic_server.security.identity import Identity
from mimic_server.security.policy_file import PolicyRules

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from mimic_server.security.audit import AuditLog
    from mimic_server.security.user_identity import AssociationUser

__all__ = ["Policy", "Refusal", "Service"]

log = logging.getLogger(__name__)

USE_OF_RESTRICTED_FUNCTION = "use-of-restricted-function"
#: What a value may be made of and still match everything: the wildcards, Person Name's
#: component and group separators, a range's hyphen, spaces.
_MATCHES_ALL = frozenset("*?^=- ")


class Refusal(Enum):
    """Why an association request is refused (mapped to A-ASSOCIATE-RJ by the DIMSE layer)."""

    CALLING_AE_TITLE_NOT_RECOGNIZED = "calling AE title not bound to the certificate"
    CALLED_AE_TITLE_NOT_RECOGNIZED = "called AE title is not this archive's"
    LOCAL_LIMIT_EXCEEDED = "too many simultaneous associations"
    NO_GRANTED_SERVICE = "no proposed presentation context is for a granted service"
    USER_REQUIRED = "a user identity is required for this certificate"
    USER_NOT_ACCEPTED = "user identity not accepted"
    CERTIFICATE_NO_LONGER_TRUSTED = "certificate no longer trusted"
    NO_PRESENTATION_CONTEXT = "no presentation context proposed"
    PROTOCOL_VERSION_NOT_SUPPORTED = "protocol version 1 not in the request"


class Admitted(Protocol):
    """What the policy reads of an admitted association (``dimse.session.Session``)."""

    identity: Identity
    peer_address: str
    calling_ae_title: str
    called_ae_title: str
    user: AssociationUser | None
    grants: Grants | None
    services: frozenset[Service] | None


class Policy:
    """The rules of one server. ``granted`` caps every identity's services (a switch for
    tools and tests); ``rules`` is the policy file's content, replaced whole on reload."""

    def __init__(
        self,
        own_ae_title: str,
        require_called_ae_title: bool = True,
        granted: frozenset[Service] = frozenset(Service),
        rules: PolicyRules | None = None,
        audit_log: AuditLog | None = None,
    ) -> None:
        self.own_ae_title = own_ae_title
        self.require_called_ae_title = require_called_ae_title
        self.granted = granted
        self.rules = rules
        self.audit_log = audit_log

    def refuse_association(
        self, identity: Identity, calling_ae_title: str, called_ae_title: str
    ) -> Refusal | None:
        """Return why this association request is refused, or None to accept it."""
        if self.require_called_ae_title and called_ae_title.strip() != self.own_ae_title:
            return Refusal.CALLED_AE_TITLE_NOT_RECOGNIZED
        if identity.ae_titles and calling_ae_title.strip() not in identity.ae_titles:
            return Refusal.CALLING_AE_TITLE_NOT_RECOGNIZED
        return None

    # -- rules ------------------------------------------------------------------------------

    def grants_for(self, identity: Identity) -> Grants:
        """The identity's rule: policy file entry > the entry's own > file default > MODALITY."""
        rules = self.rules  # one read: the watcher may replace it meanwhile
        if rules is not None and identity.trust_name in rules.certificates:
            return rules.certificates[identity.trust_name]
        if identity.rule is not None:
            return identity.rule
        return rules.default if rules is not None else MODALITY

    def services_for(self, grants: Grants, user_roles: Iterable[str] | None) -> frozenset[Service]:
        """An association's services: the rule's, narrowed by the user's roles and the cap."""
        return grants.services_for(user_roles) & self.granted

    def _grants(self, subject: Identity | Admitted) -> Grants:
        if isinstance(subject, Identity):
            return self.grants_for(subject)
        return subject.grants if subject.grants is not None else self.grants_for(subject.identity)

    # -- decisions of the DIMSE handlers ------------------------------------------------------

    def may(self, subject: Identity | Admitted, service: Service) -> bool:
        """Whether ``subject`` (an admitted session, or a bare identity) may use ``service``;
        a session's services were fixed at admission. A refusal of a session is audited."""
        if isinstance(subject, Identity):
            return service in self.services_for(self.grants_for(subject), None)
        services = subject.services
        if services is None:
            roles = subject.user.roles if subject.user is not None else None
            services = self.services_for(self._grants(subject), roles)
        if service in services:
            return True
        self.refused(subject, f"{service.value} not granted", service=service.value)
        return False

    def may_move_to(self, session: Admitted, ae_title: str) -> bool:
        """Whether the session may name ``ae_title`` as Move Destination (audited if not)."""
        if self._grants(session).may_move_to(ae_title):
            return True
        self.refused(session, "move destination not granted", service=Service.MOVE.value,
                     destination=ae_title)
        return False

    def max_find_results(self, session: Admitted) -> int | None:
        """The identity's own C-FIND match limit (the server's applies too), or None."""
        return self._grants(session).max_find_results

    def missing_narrowing(self, session: Admitted, identifier: Dataset | None) -> str | None:
        """Why this C-FIND does not narrow as the identity's ``find_requires`` demands
        (audited), or None when it does or nothing is required."""
        required = self._grants(session).find_requires
        if not required:
            return None
        for keyword in sorted(required):
            value = identifier.get(keyword) if identifier is not None else None
            if value is not None and _narrows(value):
                return None
        reason = f"C-FIND must match on one of {', '.join(sorted(required))}"
        self.refused(session, reason, service=Service.FIND.value)
        return reason

    def refused(self, session: Admitted, reason: str, **details: Any) -> None:
        """Log and audit one refusal of the policy (Security Alert)."""
        user = session.user.name if session.user is not None else None
        log.warning("refused by the access policy", extra={
            "identity": session.identity.label, "reason": reason, **details})
        if self.audit_log is None:
            return
        user_detail = {"user": user} if user else {}
        self.audit_log.record(
            audit.SECURITY_ALERT, audit.MINOR_FAILURE, event_type=USE_OF_RESTRICTED_FUNCTION,
            peer=session.peer_address, identity=session.identity.label,
            trust_name=session.identity.trust_name, calling_ae=session.calling_ae_title,
            called_ae=session.called_ae_title, reason=reason, **user_detail, **details,
        )


def _narrows(value: Any) -> bool:
    """A value that restricts the match: every one of its values holds more than wildcards
    and separators. Several values are list matching, an OR (PS3.4 C.2.2.2.3): one value
    of ``*`` among them matches everything, so one narrowing value is not enough
    (``*\\NOSUCH`` listed every patient)."""
    values = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    # Stripped as the matcher strips them (query/matching.py): "*\t" matches everything.
    texts = [str(item if item is not None else "").strip() for item in values]
    if len(texts) > 1:
        texts = [text for text in texts if text] or [""]  # an empty one of several: no match
    return bool(texts) and all(not set(text) <= _MATCHES_ALL for text in texts)
