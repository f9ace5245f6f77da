"""What a Key Vault entry means to MIMIC: trust tags, validity window, key material formats.

Pure functions, no network: :mod:`.keyvault` lists and fetches, this module interprets, so the
rules an operator relies on (which tag trusts what, which entries are ignored) live in one page.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    pkcs12,
)

from mimic_server.ae_titles import sendable_ae_title
from mimic_server.errors import ConfigurationError
from mimic_server.security.grants import Grants, RuleError, from_tags, parse_rule

log = logging.getLogger(__name__)

#: Tag that puts a certificate or secret into the trusted set: ``client`` or ``ca``.
TRUST_TAG = "mimic-trust"
#: Optional tag binding a trusted entry to calling AE titles: ``AE1,AE2``.
AE_TITLES_TAG = "mimic-ae-titles"

PKCS12 = "application/x-pkcs12"
PEM = "application/x-pem-file"

TrustKind = Literal["client", "ca"]

_SPKI = PublicFormat.SubjectPublicKeyInfo


def trust_kind(tags: Mapping[str, str] | None) -> TrustKind | None:
    """The trust an entry asks for, or None when it is not (validly) tagged for MIMIC."""
    value = (tags or {}).get(TRUST_TAG, "").strip().lower()
    if value == "client":
        return "client"
    if value == "ca":
        return "ca"
    return None


def ae_titles(tags: Mapping[str, str] | None) -> frozenset[str]:
    """The calling AE titles an entry is bound to (empty: no binding, the tag is absent).
    ``ValueError`` for a tag that binds to nothing readable (``" , "``, a title past 16
    characters): read as no binding, it let the certificate use any calling AE title."""
    if AE_TITLES_TAG not in (tags or {}):
        return frozenset()
    titles = [sendable_ae_title(t) for t in (tags or {})[AE_TITLES_TAG].split(",")]
    if not all(titles):
        raise ValueError(f"{AE_TITLES_TAG} is not a list of AE titles")
    return frozenset(t for t in titles if t)


def rule(tags: Mapping[str, str] | None, entry: str) -> Grants | None:
    """The access rule an entry's tags carry (``mimic-services`` ...), None when none.

    ``ValueError`` for a tag value that cannot be read: read as the default (a modality's
    echo and store) it could grant what the entry's own rule withheld (store, associations
    without a user), so the entry is the caller's to decide, as for a binding of AE titles.
    """
    raw = from_tags(tags)
    if raw is None:
        return None
    try:
        return parse_rule(raw, f"Key Vault entry {entry!r} tags")
    except RuleError as exc:
        raise ValueError(str(exc)) from exc


def active(
    enabled: bool | None,
    not_before: datetime | None,
    expires_on: datetime | None,
    now: datetime,
) -> bool:
    """Key Vault's own switch and window: disabled or outside nbf/exp is never trusted.

    ``enabled`` missing counts as disabled (deny by default).
    """
    if enabled is not True:
        return False
    if not_before is not None and now < not_before:
        return False
    return not (expires_on is not None and now > expires_on)


def certificates_from_pem(text: str) -> list[x509.Certificate]:
    """Every certificate in PEM text an operator pasted into a secret."""
    try:
        return x509.load_pem_x509_certificates(text.encode("utf-8"))
    except ValueError as exc:
        raise ValueError("no PEM certificate in the secret") from exc


def server_identity(value: str, content_type: str | None) -> tuple[bytes, bytes]:
    """(chain PEM, key PEM) from the secret behind a Key Vault certificate.

    Key Vault stores it as base64 PKCS#12 without password or as PEM (key and chain), per the
    certificate policy's content type; the leaf comes first in the chain we return.
    """
    kind = (content_type or "").strip().lower()
    if kind == PKCS12:
        try:
            key, leaf, extra = pkcs12.load_key_and_certificates(base64.b64decode(value), None)
        except ValueError as exc:
            raise ConfigurationError(f"server certificate secret is not PKCS#12: {exc}") from exc
        if key is None or leaf is None:
            raise ConfigurationError("server certificate secret has no private key")
        certs = [leaf, *extra]
    elif kind == PEM:
        data = value.encode("utf-8")
        try:
            key = load_pem_private_key(data, None)
            certs = x509.load_pem_x509_certificates(data)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"server certificate secret is not PEM: {exc}") from exc
        public = key.public_key().public_bytes(Encoding.DER, _SPKI)
        certs.sort(key=lambda c: c.public_key().public_bytes(Encoding.DER, _SPKI) != public)
    else:
        raise ConfigurationError(f"server certificate secret has content type {content_type!r}")
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    chain_pem = b"".join(c.public_bytes(Encoding.PEM) for c in certs)
    return chain_pem, key_pem
