"""Certificate evaluation: a certificate the TLS layer verified, turned into an Identity."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from mimic_server.certs import CertBundle, TrustedCertificate, common_name
from mimic_server.security.identity import Identity


class TrustIndex:
    """The trusted set of one bundle, indexed for the per-connection lookup."""

    def __init__(self, bundle: CertBundle) -> None:
        valid = bundle.currently_valid()
        self._clients = {t.fingerprint: t for t in valid if t.kind == "client"}
        self._cas = [t for t in valid if t.kind == "ca"]
        self.fingerprints = frozenset(self._clients)

    def identify(self, der: bytes) -> Identity | None:
        """The identity of a certificate the TLS layer verified, or None if no longer trusted."""
        fingerprint = hashlib.sha256(der).hexdigest()
        cert = x509.load_der_x509_certificate(der)
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return None
        entry: TrustedCertificate | None = self._clients.get(fingerprint)
        if entry is None:
            entry = next((ca for ca in self._cas if _issued_by(cert, ca.certificate)), None)
        if entry is None:
            return None
        return Identity(common_name(cert), fingerprint, entry.name, entry.ae_titles, entry.rule)

    def still_trusts(self, identity: Identity) -> bool:
        return identity.fingerprint in self._clients or any(
            ca.name == identity.trust_name for ca in self._cas
        )


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
