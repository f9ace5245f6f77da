"""The Azure Key Vault certificate source.

* Server identity: the Key Vault *certificate* named by ``MIMIC_KEYVAULT_SERVER_CERT``; its key
  and chain come from the secret Key Vault keeps behind every certificate.
* Trusted clients: certificates and secrets tagged ``mimic-trust=client|ca`` (optionally
  ``mimic-ae-titles=AE1,AE2``); a secret holds PEM text, because Key Vault cannot import a
  public certificate without its private key. Rules: :mod:`.vaultitems`.

:meth:`KeyVaultSource.version` only lists properties (two paged list calls, no secret reads);
:meth:`KeyVaultSource.load` fetches only entries whose listed properties changed since the last
load. List items carry no version id, so an entry's change key is what does change with every
new version: the thumbprint (``x5t``) of a certificate, the ``updated`` time of a secret.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError, HttpResponseError
from azure.keyvault.certificates import CertificateClient
from azure.keyvault.secrets import SecretClient
from cryptography import x509

from mimic_server.certs import CertBundle, TrustedCertificate
from mimic_server.certs import vaultitems as items
from mimic_server.certs.vaulthttp import client_options
from mimic_server.errors import ConfigurationError
from mimic_server.security.grants import Grants

log = logging.getLogger(__name__)


class _NoCertificate(ConfigurationError):
    """An entry read, whose value holds no usable certificate."""


@dataclass(frozen=True, slots=True)
class _Entry:
    """One listed certificate or secret, as much as the listing tells."""

    kind: str  # "certificate" | "secret"
    name: str
    change_key: str
    enabled: bool | None
    not_before: datetime | None
    expires_on: datetime | None
    tags: dict[str, str] = field(default_factory=dict)

    def active(self, now: datetime) -> bool:
        return items.active(self.enabled, self.not_before, self.expires_on, now)

    def fingerprint(self, now: datetime) -> list[Any]:
        # active(now) is in the token so that crossing nbf/exp triggers a reload by itself.
        return [
            self.kind, self.name, self.change_key, self.enabled,
            _iso(self.not_before), _iso(self.expires_on), sorted(self.tags.items()),
            self.active(now),
        ]


@dataclass(frozen=True, slots=True)
class _Listing:
    server: _Entry | None
    trusted: tuple[_Entry, ...]


class KeyVaultSource:
    """A :class:`~mimic_server.certs.CertificateSource` backed by one Azure Key Vault."""

    def __init__(
        self,
        vault_url: str,
        credential: TokenCredential,
        server_certificate: str,
        *,
        verify_challenge_resource: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.vault_url = vault_url.rstrip("/")
        self.server_certificate = server_certificate
        self._clock = clock
        options = client_options(verify_challenge_resource)
        self._certificates = CertificateClient(self.vault_url, credential, **options)
        self._secrets = SecretClient(self.vault_url, credential, **options)
        self._listing: _Listing | None = None
        self._server: tuple[str, bytes, bytes] | None = None  # (change key, chain, key)
        self._cache: dict[tuple[str, str, str], list[x509.Certificate]] = {}
        #: (kind, name) -> the certificates last read while the entry was trusted: a disabled
        #: secret cannot be read again (403), yet the console shows what was revoked.
        self._last_trusted: dict[tuple[str, str], list[x509.Certificate]] = {}
        #: (kind, name) of the entries the last load trusted: only these keep their last
        #: certificates while they cannot be read (one revoked since is not trusted again).
        self._in_force: set[tuple[str, str]] = set()
        #: (kind, name) -> the AE titles and rule of each entry the last load trusted: kept
        #: while its tags cannot be read (a typo in the portal).
        self._last_bound: dict[tuple[str, str], tuple[frozenset[str], Grants | None]] = {}

    def describe(self) -> str:
        return f"Key Vault {self.vault_url}"

    # -- the cheap part --------------------------------------------------------------------

    def version(self) -> str:
        listing = self._vault(self._list)
        self._listing = listing  # the next load() works from exactly what was hashed
        now = self._clock()
        token = [e.fingerprint(now) for e in listing.trusted]
        if listing.server is not None:
            token.append(listing.server.fingerprint(now))
        return hashlib.sha256(json.dumps(token).encode()).hexdigest()

    def _list(self) -> _Listing:
        server: _Entry | None = None
        trusted: list[_Entry] = []
        for props in self._certificates.list_properties_of_certificates():
            entry = _Entry(
                "certificate", str(props.name), (props.x509_thumbprint or b"").hex(),
                props.enabled, props.not_before, props.expires_on, dict(props.tags or {}),
            )
            if entry.name == self.server_certificate:
                server = entry
            if items.trust_kind(entry.tags):
                trusted.append(entry)
        for props in self._secrets.list_properties_of_secrets():
            if props.managed:  # the secret behind a certificate: seen as the certificate
                continue
            entry = _Entry(
                "secret", str(props.name), _iso(props.updated_on) or "",
                props.enabled, props.not_before, props.expires_on, dict(props.tags or {}),
            )
            if items.trust_kind(entry.tags):
                trusted.append(entry)
        trusted.sort(key=lambda e: (e.kind, e.name))
        return _Listing(server, tuple(trusted))

    # -- the full load -----------------------------------------------------------------------

    def load(self) -> CertBundle:
        listing, self._listing = self._listing, None
        if listing is None:
            listing = self._vault(self._list)
        chain, server_key = self._identity(listing.server)
        now = self._clock()
        trusted: list[TrustedCertificate] = []
        seen: set[tuple[str, str, str]] = set()
        in_force: set[tuple[str, str]] = set()
        bound: dict[tuple[str, str], tuple[frozenset[str], Grants | None]] = {}
        for entry in listing.trusted:
            kind = items.trust_kind(entry.tags)
            if kind is None or not entry.active(now):
                continue
            cache_key = (entry.kind, entry.name, entry.change_key)
            seen.add(cache_key)
            certs = self._cache.get(cache_key)
            if certs is None:
                try:
                    certs = self._fetch(entry)
                except ConfigurationError as exc:
                    # One entry unreadable (a 403 where access is granted per secret, an
                    # outage mid-load, a new version holding no usable certificate) must not
                    # hold back the rest of the listing, revocations first. Trusted by the
                    # last load, it keeps what was last read of it; else it is not trusted.
                    # A disabled or missing entry never gets this far.
                    key = (entry.kind, entry.name)
                    certs = self._last_trusted.get(key) if key in self._in_force else None
                    log.error(
                        "trusted entry cannot be read; its last certificates stay trusted"
                        if certs else "trusted entry cannot be read; not trusted",
                        extra={"kind": entry.kind, "entry": entry.name, "error": str(exc)},
                    )
                    if certs is None:
                        continue
                else:
                    self._cache[cache_key] = certs
            self._last_trusted[(entry.kind, entry.name)] = certs
            key = (entry.kind, entry.name)
            try:
                titles = items.ae_titles(entry.tags)
                rule = items.rule(entry.tags, entry.name)
            except ValueError as exc:
                # A tag mistyped in the portal: read as no binding it let the certificate
                # use any calling AE title, read as the default rule it could grant store or
                # drop `user = required`. Trusted by the last load, the entry keeps its last
                # binding; else it is not trusted.
                kept = self._last_bound.get(key)
                log.error(
                    "Key Vault entry's binding tags cannot be read; it keeps its last binding"
                    if kept else "Key Vault entry not trusted: its binding tags cannot be read",
                    extra={"entry": entry.name, "reason": str(exc)})
                if kept is None:
                    continue
                titles, rule = kept
            bound[key] = titles, rule
            trusted.extend(TrustedCertificate(entry.name, kind, c, titles, rule) for c in certs)
            in_force.add(key)
        self._cache = {k: v for k, v in self._cache.items() if k in seen}
        self._in_force = in_force
        self._last_bound = bound
        return CertBundle(chain, server_key, tuple(trusted))

    def revoked(self) -> tuple[TrustedCertificate, ...]:
        """The tagged entries the vault keeps but MIMIC does not trust now (disabled, expired
        or not yet valid), for the operator console; never part of a bundle.

        A disabled *certificate* still gives its public part (Key Vault withholds only the
        secret behind it); a disabled *secret* cannot be read at all, so it is shown only when
        this process read it while it was trusted."""
        listing = self._vault(self._list)
        now = self._clock()
        found: list[TrustedCertificate] = []
        for entry in listing.trusted:
            kind = items.trust_kind(entry.tags)
            if kind is None or entry.active(now):
                continue
            certs: list[x509.Certificate] | None
            if entry.kind == "certificate":
                try:
                    certs = self._fetch(entry)
                except _NoCertificate:
                    certs = None
            else:
                certs = self._last_trusted.get((entry.kind, entry.name))
            try:
                titles = items.ae_titles(entry.tags)
            except ValueError:
                titles = frozenset()  # shown as it is in the vault: it is not trusted anyway
            found.extend(TrustedCertificate(entry.name, kind, c, titles) for c in certs or ())
        return tuple(found)

    def _identity(self, entry: _Entry | None) -> tuple[bytes, bytes]:
        """The server's chain and key; once one was loaded, a server certificate that
        cannot be read (disabled, deleted, its secret refused) keeps the last one in
        service, logged: the trusted set is loaded all the same, so that a fault of the
        server's identity never holds a revocation back. Only the first load fails."""
        try:
            return self._vault(lambda: self._server_identity(entry))  # type: ignore[no-any-return]
        except ConfigurationError as exc:
            if self._server is None:
                raise
            log.error(
                "server certificate cannot be loaded; the one in service is kept",
                extra={"certificate": self.server_certificate, "error": str(exc)},
            )
            return self._server[1], self._server[2]

    def _server_identity(self, entry: _Entry | None) -> tuple[bytes, bytes]:
        name = self.server_certificate
        if entry is None:
            raise ConfigurationError(f"{self.describe()}: no certificate named {name!r}")
        if entry.enabled is not True:
            raise ConfigurationError(f"{self.describe()}: server certificate {name!r} is disabled")
        if self._server is not None and self._server[0] == entry.change_key:
            return self._server[1], self._server[2]
        certificate = self._certificates.get_certificate(name)
        secret = self._secrets.get_secret(name, certificate.properties.version)
        try:
            chain, key = items.server_identity(secret.value or "", secret.properties.content_type)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{self.describe()}: {name!r}: {exc}") from exc
        self._server = (entry.change_key, chain, key)
        log.info(
            "server certificate loaded",
            extra={"certificate": name, "version": certificate.properties.version},
        )
        return chain, key

    def _fetch(self, entry: _Entry) -> list[x509.Certificate]:
        """The certificates of one trusted entry; :class:`_NoCertificate` when it holds
        none, ConfigurationError when it cannot be read."""
        if entry.kind == "certificate":
            cer = self._vault(lambda: self._certificates.get_certificate(entry.name).cer)
        else:
            value = self._vault(lambda: self._secrets.get_secret(entry.name).value)
        try:
            if entry.kind == "certificate":
                return [x509.load_der_x509_certificate(bytes(cer or b""))]
            return items.certificates_from_pem(value or "")
        except ValueError as exc:
            raise _NoCertificate(f"no usable certificate: {exc}") from exc

    def _vault(self, call: Callable[[], Any]) -> Any:
        """Run one vault interaction; SDK failures become a ConfigurationError naming the vault."""
        try:
            return call()
        except HttpResponseError as exc:
            reason = (exc.message or str(exc)).splitlines()[0]
            raise ConfigurationError(
                f"{self.describe()}: HTTP {exc.status_code}: {reason}"
            ) from exc
        except (AzureError, ValueError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ConfigurationError(f"{self.describe()}: {reason}") from exc


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None
