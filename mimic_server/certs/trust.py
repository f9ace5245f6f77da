"""Certificate evaluation: a certificate the TLS layer verified, turned into an Identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mimic_server.certs import CertBundle, TrustedCertificate, common_name
from mimic_server.security.identity import Identity


class TrustIndex:
    """The trusted set of one bundle, indexed for the per-connection lookup."""

    def __init__(self, bundle: CertBundle) -> None:
        valid = bundle.currently_valid()
        self._clients = {t.fingerprint: t for t in valid if t.kind == "client"}
        #: Client entries of one certificate: only such a one may be a CA (a modality's
        #: self-signed certificate); a chain pasted into an entry pins its CAs too.
        self._alone = {name for name, count in Counter(
            t.name for t in self._clients.values()).items() if count == 1}
        self._cas = [t for t in valid if t.kind == "ca"]
        self._ca_keys = frozenset(_issuer_key(ca.certificate) for ca in self._cas)
        self.fingerprints = frozenset(self._clients)

    def identify(self, der: bytes) -> Identity | None:
        """The identity of a certificate the TLS layer verified, or None if no longer trusted."""
        fingerprint = hashlib.sha256(der).hexdigest()
        cert = x509.load_der_x509_certificate(der)
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return None
        entry: TrustedCertificate | None = self._clients.get(fingerprint)
        if _is_ca(cert) and (entry is None or entry.name not in self._alone):
            # A CA is no modality (OpenSSL lets one without Key Usage through), unless pinned
            # alone: a modality's self-signed certificate may say CA:TRUE (openssl req -x509).
            return None
        if entry is not None:
            return Identity(common_name(cert), fingerprint, entry.name, entry.ae_titles,
                            entry.rule, trusted_by=fingerprint,
                            not_after=cert.not_valid_after_utc)
        entry = next((ca for ca in self._cas if _issued_by(cert, ca.certificate)), None)
        if entry is None:
            return None
        return Identity(common_name(cert), fingerprint, entry.name, entry.ae_titles, entry.rule,
                        trusted_by=_issuer_key(entry.certificate),
                        not_after=cert.not_valid_after_utc)

    def still_trusts(self, identity: Identity) -> bool:
        """Whether what made ``identity`` trusted is still in the set: its pinned certificate,
        or the CA that issued it, by subject and key: a CA replaced under the same entry name
        (one retired) no longer vouches for what the old one issued, while one renewed with
        its key still does. And whether its own certificate is still valid: a pinned one
        that expires leaves the set, but one a trusted CA issued did not, and its open
        associations outlived it."""
        if identity.not_after is not None and datetime.now(UTC) > identity.not_after:
            return False
        return identity.fingerprint in self._clients or identity.trusted_by in self._ca_keys


def applied_content(bundle: CertBundle) -> frozenset[str]:
    """Everything a listener takes from ``bundle``, one line per part: the server chain it
    presents and each trusted entry valid now (client or CA) with its binding (name, AE
    titles, access rule). Two bundles with the same lines are served alike; a difference in
    any of them is a change the other workers must apply too (a revoked CA, a rotated server
    certificate, an edited binding), not only a change of the client fingerprints."""
    lines = {"server " + hashlib.sha256(bundle.server_chain_pem).hexdigest()}
    for entry in bundle.currently_valid():
        lines.add(json.dumps(
            [entry.kind, entry.fingerprint, entry.name, sorted(entry.ae_titles),
             _canonical(entry.rule)],
            sort_keys=True,
        ))
    return frozenset(lines)


def _canonical(value: Any) -> Any:
    """``value`` as JSON-able data in one order whatever the process: a frozenset of enum
    members iterates in an order that depends on the process's hash seed, and the workers'
    reports of one change must hash alike (``workers/link.trust_token``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset, list, tuple)):
        items = [_canonical(v) for v in value]
        return sorted(items, key=json.dumps) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    return value


def _issuer_key(ca: x509.Certificate) -> str:
    """A CA as the issuer of what it signed: its subject and public key (a renewal keeps
    both), hashed."""
    spki = ca.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(ca.subject.public_bytes() + spki).hexdigest()


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
