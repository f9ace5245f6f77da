"""What the console needs from the running `mimic web`, handed in by its composition root.

The console knows no concrete source: the certificate source, the audit trail's storage and
the `mimic serve` status URL are read through the callables given here, so that the pages
work the same on the embedded archive and in Azure (Key Vault, PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import Engine
from starlette.requests import Request

from mimic_server.security.audit import AuditFilter, AuditLog
from mimic_server.security.policy import Policy
from mimic_server.security.refusals import RefusalAudit
from mimic_server.web.console.access import RoleMap
from mimic_server.web.console.exchanges import TokenExchanges
from mimic_server.web.console.modalities import TrustView
from mimic_server.web.console.oidc import OidcClient
from mimic_server.web.console.sessions import Signer, UsedLogins
from mimic_server.web.console.studies import Gate, StudyBrowser

#: Calls to the issuer in progress at once per process (``issuer_calls``).
ISSUER_CALLS = 4


@dataclass
class ConsoleContext:
    #: None: sign-in is not configured; every console page answers 503 and says why.
    oidc: OidcClient | None
    signer: Signer
    roles: RoleMap
    session_seconds: float = 8 * 3600.0
    #: The registered redirect URI; None: this request's own ``/auth/callback``.
    redirect_uri: str | None = None
    #: The public URL of ``mimic web`` (``MIMIC_WEB_BASE_URL``): with ``redirect_uri``, the
    #: origin a browser names behind a TLS-terminating ingress (``auth._same_origin``).
    base_url: str | None = None
    studies: StudyBrowser | None = None
    engine: Engine | None = None
    policy: Policy | None = None
    trust: Callable[[], TrustView] | None = None
    #: The newest matching records of the audit trail ``mimic audit`` reads (file or
    #: table), at most the limit given (None: all), newest first, without their messages.
    audit_records: Callable[[AuditFilter, int | None], list[dict[str, Any]]] | None = None
    #: The trail's URI, as Audit Log Used records name it (the file's, or the table's).
    audit_uri: str = "urn:mimic:audit-trail"
    #: trust name -> last successful association (ISO time); None: scan ``audit_records``.
    last_logins: Callable[[], dict[str, str]] | None = None
    #: `mimic serve`'s /status/associations document.
    serve_status: Callable[[], dict[str, Any]] | None = None
    #: Where console sign-ins and refusals are recorded (User Authentication).
    audit_log: AuditLog | None = None
    #: The access policy's gate for this request's study queries (``gate.py``); None: the
    #: console's own rights only (tests of the console alone).
    query_gate: Callable[[Request], Gate] | None = None
    #: Refused sign-ins counted per peer and reason: the first of an interval is logged and
    #: recorded at once, the repeats as one WARNING and one record with their count (the
    #: composition root starts and stops its thread); None: each one logged and recorded.
    sign_in_refusals: RefusalAudit | None = None
    #: Login states already brought back to ``/auth/callback`` (single use).
    used_logins: UsedLogins = field(default_factory=UsedLogins)
    #: Token exchanges per peer in a fixed window (``exchanges.py``): past its limit the
    #: callback is answered 429 without calling the issuer.
    token_exchanges: TokenExchanges = field(default_factory=TokenExchanges)
    #: The threads the issuer's endpoints (discovery, token exchange) are called in: a slow
    #: or unreachable token endpoint, or strangers' callbacks by the dozen, held every
    #: thread of anyio's default pool, which DICOMweb's sync routes share (2 ms -> 2.5 s);
    #: past these few a callback waits here, not there.
    issuer_calls: anyio.CapacityLimiter = field(
        default_factory=lambda: anyio.CapacityLimiter(ISSUER_CALLS))
