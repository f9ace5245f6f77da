"""Who is on the other end, as the policy sees it: certificate x AE titles (x user: Session).

The listener attaches the verified identity to the association it creates; the DIMSE
handlers read it back. Neither needs to know how the certificate was checked (``certs.trust``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from mimic_server.security.grants import Grants


@dataclass(frozen=True, slots=True)
class Identity:
    """A peer as the policy sees it. ``ae_titles`` empty means no AE title binding."""

    common_name: str
    fingerprint: str
    trust_name: str
    ae_titles: frozenset[str] = frozenset()
    #: The rule the trust entry carries itself (Key Vault tags, the binding file), if any;
    #: the policy file's rule for ``trust_name`` overrides it (``Policy.grants_for``).
    rule: Grants | None = field(default=None, compare=False)
    #: What made it trusted (``TrustIndex.still_trusts``): the certificate's own fingerprint
    #: where pinned, else a hash of the issuing CA's subject and public key.
    trusted_by: str = field(default="", compare=False)
    #: The certificate's notAfter: past it, no longer trusted (``TrustIndex.still_trusts``)
    #: whatever trusted it; a CA trusted as a whole outlives what it issued, and only a
    #: pinned certificate's expiry shows in the trust set. None: nothing proven to expire.
    not_after: datetime | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        if not self.fingerprint:  # nobody proven (plain TCP)
            return self.common_name
        return f"{self.common_name} ({self.fingerprint[:16]})"


#: The peer of a plain-TCP lab listener (``MIMIC_TLS=off``): nobody is proven.
ANONYMOUS = Identity("anonymous", "", "tls-off")

_ATTRIBUTE = "_mimic_identity"


def attach_identity(assoc: object, identity: Identity) -> None:
    """Record the verified peer on the association the listener creates for it."""
    setattr(assoc, _ATTRIBUTE, identity)


def peer_identity(assoc: object) -> Identity | None:
    """The verified peer of an association, as the listener established it at TLS time."""
    return getattr(assoc, _ATTRIBUTE, None)
