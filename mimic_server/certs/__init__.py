"""Certificate sources: where the server's own certificate and the trusted set come from.

A source gives a :class:`CertBundle`; :mod:`mimic_server.certs.watcher` polls it and hands each
new bundle to the listener, which builds a fresh ``SSLContext`` from it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mimic_server.security.grants import Grants

__all__ = ["CertBundle", "CertificateSource", "TrustedCertificate"]


@dataclass(frozen=True, slots=True)
class TrustedCertificate:
    """One trust entry: a single modality (``client``) or a whole issuing CA (``ca``)."""

    name: str
    kind: Literal["client", "ca"]
    certificate: x509.Certificate
    ae_titles: frozenset[str] = frozenset()
    #: The entry's own access rule (Key Vault tags, binding file); None: it carries none.
    rule: Grants | None = field(default=None, compare=False)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.certificate.public_bytes(Encoding.DER)).hexdigest()

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(Encoding.PEM).decode("ascii")

    @property
    def common_name(self) -> str:
        return common_name(self.certificate)

    def valid_at(self, when: datetime) -> bool:
        return self.certificate.not_valid_before_utc <= when <= self.certificate.not_valid_after_utc


@dataclass(frozen=True, slots=True)
class CertBundle:
    """The server's identity (PEM chain and key) and the client certificates it trusts."""

    server_chain_pem: bytes
    server_key_pem: bytes = field(repr=False)
    trusted: tuple[TrustedCertificate, ...]

    def currently_valid(self) -> tuple[TrustedCertificate, ...]:
        now = datetime.now(UTC)
        return tuple(t for t in self.trusted if t.valid_at(now))


class CertificateSource(Protocol):
    def describe(self) -> str:
        """Where the certificates come from, for log lines and error messages."""
        ...

    def version(self) -> str:
        """A cheap token that changes whenever :meth:`load` would return something new."""
        ...

    def load(self) -> CertBundle: ...


def common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else certificate.subject.rfc4514_string()
