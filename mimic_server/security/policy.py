"""Association and service policy: deny by default, decided per verified identity.

The TLS layer has already refused every peer that is not in the trusted set; this module
decides what a trusted peer may do: which AE titles it may call from and to, and which DIMSE
services it may use.
"""

from __future__ import annotations

from enum import Enum

from mimic_server.security.grants import Service
from mimic_server.security.identity import Identity

__all__ = ["Policy", "Refusal", "Service"]


class Refusal(Enum):
    """Why an association request is refused (mapped to A-ASSOCIATE-RJ by the DIMSE layer)."""

    CALLING_AE_TITLE_NOT_RECOGNIZED = "calling AE title not bound to the certificate"
    CALLED_AE_TITLE_NOT_RECOGNIZED = "called AE title is not this archive's"
    LOCAL_LIMIT_EXCEEDED = "too many simultaneous associations"


class Policy:
    """The rules of one server; every trusted identity may use the services in ``granted``."""

    def __init__(
        self,
        own_ae_title: str,
        require_called_ae_title: bool = True,
        granted: frozenset[Service] = frozenset(Service),
    ) -> None:
        self.own_ae_title = own_ae_title
        self.require_called_ae_title = require_called_ae_title
        self.granted = granted

    def refuse_association(
        self, identity: Identity, calling_ae_title: str, called_ae_title: str
    ) -> Refusal | None:
        """Return why this association request is refused, or None to accept it."""
        if self.require_called_ae_title and called_ae_title.strip() != self.own_ae_title:
            return Refusal.CALLED_AE_TITLE_NOT_RECOGNIZED
        if identity.ae_titles and calling_ae_title.strip() not in identity.ae_titles:
            return Refusal.CALLING_AE_TITLE_NOT_RECOGNIZED
        return None

    def may(self, identity: Identity, service: Service) -> bool:
        return service in self.granted
