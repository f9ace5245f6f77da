"""What a DICOMweb request needs, handed in by the composition root (``webapp.py``).

The routes never build an index, a store or a validator themselves: ``mimic web`` opens the
same ones as ``mimic serve`` (``resources.py``) and passes them here, so the two front doors
read one archive under one policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request

    from mimic_server.query.finder import Finder
    from mimic_server.security.audit import AuditLog
    from mimic_server.security.audit_journal import Journals
    from mimic_server.security.grants import Grants
    from mimic_server.security.policy import Policy
    from mimic_server.security.tokens import TokenUser, TokenValidator
    from mimic_server.storage import ObjectStore
    from mimic_server.web.dicomweb.kept_copies import KeptCopies
    from mimic_server.web.dicomweb.stow_part import PartMemory

#: A way other than a bearer token to know who sent a request (the console's session
#: cookie): the user, or None when the request does not carry that credential.
UserSource = Callable[["Request"], "TokenUser | None"]


@dataclass
class DicomWebContext:
    """The archive as the DICOMweb routes see it."""

    finder: Finder
    store: ObjectStore
    policy: Policy
    audit: AuditLog
    #: Validates OAuth 2.0 bearer tokens (the User Identity Negotiation validator); None
    #: only with ``auth="none"``.
    tokens: TokenValidator | None
    #: "oidc" (bearer tokens) or "none" (development, loopback only: checked at start).
    auth: str = "oidc"
    #: The archive's AE title (audit records name the archive by it).
    ae_title: str = "MIMIC"
    #: The policy file table whose rule applies to DICOMweb requests.
    policy_entry: str = "dicomweb"
    #: The front door's own rule (``MIMIC_WEB_ROLES``), used when the policy file has no
    #: table for ``policy_entry``; None: nothing is granted (everything with ``auth="none"``).
    rule: Grants | None = None
    #: Public base URL (``https://host``) for Retrieve URLs and bulk data URIs; None: the
    #: request's own.
    base_url: str | None = None
    #: The ingest path of STOW-RS (``archive/ingest.py``), wired by the composition root.
    ingest: Any = None
    #: The memory that STOW-RS parts of every request may hold together
    #: (``MIMIC_WEB_STOW_MEMORY_BYTES``); None: each part its 8 MiB, with no bound overall.
    part_memory: PartMemory | None = None
    #: Seconds a STOW-RS body may stay silent before its request is given up
    #: (``MIMIC_NETWORK_TIMEOUT``, as for a DICOM connection).
    body_timeout: float = 60.0
    #: More credentials than bearer tokens (the console's session), tried first.
    user_sources: list[UserSource] = field(default_factory=list)
    #: Verified copies of large objects kept for the WADO-RS requests after the first
    #: (``kept_copies.py``); None: each request makes its own.
    copies: KeptCopies | None = None
    #: Where the audit trail is the file: the journals of STOW-RS requests' stored instances
    #: (``security/audit_journal.py``); None where each instance is recorded in its index
    #: transaction (the table).
    journals: Journals | None = None
