"""Who sent a DICOMweb request, and whether the access policy lets them use the service.

OAuth 2.0 bearer tokens (RFC 6750) are validated by the same :class:`TokenValidator` as
User Identity Negotiation type 5; the token's roles narrow the services of the rule the
policy holds for the DICOMweb front door (``MIMIC_WEB_POLICY_ENTRY``, a
``[certificates.NAME]`` table of the policy file), exactly as a DIMSE user's roles narrow
its certificate's rule. QIDO-RS is C-FIND, WADO-RS is C-GET, STOW-RS is C-STORE to the
policy. Without such a table the rule of ``MIMIC_WEB_ROLES`` applies (as a Key Vault
entry's tags are a certificate's own rule); deny by default: without either, DICOMweb grants
nothing (the file's ``[default]`` is for certificates, not for the web).

``MIMIC_WEB_AUTH=none`` (development) admits every request with the table's services, or
all of them without one; ``webapp.py`` refuses it unless the listener is on loopback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.requests import Request

from mimic_server.security import audit
from mimic_server.security.grants import FULL, Grants, Service
from mimic_server.security.identity import Identity
from mimic_server.security.tokens import InvalidToken, TokenUser
from mimic_server.security.user_identity import AssociationUser
from mimic_server.web.dicomweb.context import DicomWebContext
from mimic_server.web.dicomweb.errors import WebError

log = logging.getLogger(__name__)

#: The DICOMweb front door's rule when the policy file has none: nothing.
NOTHING = Grants(frozenset())
REALM = "DICOMweb"
#: What the DICOMweb services are to the policy.
QIDO, WADO, STOW = Service.FIND, Service.GET, Service.STORE


@dataclass
class WebSession:
    """One request's requestor as the policy sees it (``security.policy.Admitted``)."""

    identity: Identity
    peer_address: str
    user: AssociationUser | None
    grants: Grants | None
    services: frozenset[Service] | None
    calling_ae_title: str = ""
    called_ae_title: str = ""

    def audit_details(self) -> dict[str, object]:
        """The requestor as audit record details (cf. ``dimse.audited.participants``)."""
        return {
            "peer": self.peer_address, "identity": self.identity.label,
            "trust_name": self.identity.trust_name,
            "user": self.user.name if self.user is not None else None,
        }


def web_identity(ctx: DicomWebContext) -> Identity:
    rule = ctx.rule or (FULL if ctx.auth == "none" else NOTHING)
    return Identity("DICOMweb", "", ctx.policy_entry, rule=rule)


def _peer(request: Request) -> str:
    client = request.client
    if client is None:
        return "unknown"
    # Port 0: the address an ingress forwarded (``web/forwarded.py``), whose port it keeps.
    return f"{client.host}:{client.port}" if client.port else client.host


def _challenge(error: str | None = None, description: str | None = None) -> dict[str, str]:
    value = f'Bearer realm="{REALM}"'
    if error:
        value += f', error="{error}"'
    if description:  # RFC 6750 3: no '"' nor '\\', printable ASCII only
        allowed = "".join(c for c in description if " " <= c <= "~" and c not in '"\\')
        value += f', error_description="{allowed}"'
    return {"WWW-Authenticate": value}


def _bearer_user(ctx: DicomWebContext, request: Request) -> TokenUser:
    header = request.headers.get("authorization")
    if not header:
        raise WebError(401, "a bearer token is required", _challenge())
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise WebError(401, "only bearer tokens are accepted", _challenge("invalid_request"))
    if ctx.tokens is None:  # never at run time: webapp.py refuses to start so
        raise WebError(401, "bearer tokens are not configured", _challenge("invalid_token"))
    try:
        return ctx.tokens.validate(token)
    except InvalidToken as exc:
        reason = str(exc)
        log.warning("DICOMweb token refused", extra={"reason": reason, "peer": _peer(request)})
        ctx.audit.record(
            audit.USER_AUTHENTICATION, audit.MINOR_FAILURE, event_type="login",
            peer=_peer(request), identity="DICOMweb", trust_name=ctx.policy_entry,
            reason=f"token refused: {reason}", method="jwt",
        )
        raise WebError(401, f"token refused: {reason}",
                       _challenge("invalid_token", reason)) from exc


def authenticate(ctx: DicomWebContext, request: Request) -> WebSession:
    """The request's session; :class:`WebError` 401 (with a challenge) when nobody is proven."""
    identity = web_identity(ctx)
    user: TokenUser | None = None
    for source in ctx.user_sources:
        user = source(request)
        if user is not None:
            break
    if user is None and ctx.auth != "none":
        user = _bearer_user(ctx, request)
    if user is None:
        association_user = AssociationUser("anonymous (MIMIC_WEB_AUTH=none)", frozenset(),
                                           "none")
        roles = None
    else:
        association_user = AssociationUser(user.name or user.subject, user.roles, "jwt")
        roles = user.roles
    grants = ctx.policy.grants_for(identity)
    services = ctx.policy.services_for(grants, roles)
    return WebSession(identity, _peer(request), association_user, grants, services,
                      called_ae_title=ctx.ae_title)


def authorize(ctx: DicomWebContext, request: Request, service: Service) -> WebSession:
    """The session when the policy grants it ``service``; else 401 or 403 (audited)."""
    session = authenticate(ctx, request)
    if not ctx.policy.may(session, service):
        raise WebError(403, f"{service.value} is not granted to this user")
    return session
