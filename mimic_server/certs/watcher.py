"""Polls a certificate source and hands every new bundle to the listener.

Polling is cheap (``source.version()``); a full load happens only when the version changed or
when asked (SIGHUP). A failed load keeps the last good trust set in force and is retried on
the next period: an outage of the source never takes the archive down.

Which trusted certificates are in force also depends on the clock: one whose notBefore is in
the future becomes valid, another expires, without any change in the source. Every poll
therefore also compares the set valid now with the set valid when the last bundle was
applied, and applies that bundle again when they differ (whatever the source). A certificate
a CA trusted as a whole issued is in no bundle, so its expiry changes nothing there: every
poll also calls ``sweep`` (the listener aborts the associations whose certificate has expired
since their handshake).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cryptography import x509

from mimic_server.certs import CertBundle, CertificateSource, common_name
from mimic_server.polling import Poller

log = logging.getLogger(__name__)

EXPIRY_WARNING = timedelta(days=30)


class CertificateWatcher(Poller):
    def __init__(
        self,
        source: CertificateSource,
        period: float,
        apply: Callable[[CertBundle], CertBundle | None],
        version: str | None = None,
        bundle: CertBundle | None = None,
        sweep: Callable[[], object] = lambda: None,
    ) -> None:
        """``version`` and ``bundle``: what the listener was started with, if anything;
        ``sweep``: called after every poll, whether anything changed or not."""
        self.source = source
        super().__init__(period, "mimic-cert-watcher")
        self.apply = apply
        self.sweep = sweep
        self.failures = 0
        self._version = version
        self._bundle = bundle
        self._valid = _valid_now(bundle)

    def poll(self) -> bool:
        """Reload if the source changed, or apply the last bundle again if the certificates
        valid now are not those valid when it was applied; True if a bundle was applied.
        Then :attr:`sweep`, whatever happened (a failed load included)."""
        try:
            return self._poll()
        finally:
            self.sweep()

    def _poll(self) -> bool:
        try:
            version = self.source.version()
            if version == self._version:
                return self._reevaluate()
            bundle = self.source.load()
            served = self.apply(bundle) or bundle  # its server identity may be kept
        except Exception as exc:
            self.failures += 1
            log.error(
                "certificate refresh failed; the last good trust set stays in force",
                extra={"source": self.source.describe(), "error": str(exc)},
            )
            return False
        self._version, self._bundle, self._valid = version, bundle, _valid_now(bundle)
        warn_expiring(served)
        return True

    def _reevaluate(self) -> bool:
        bundle = self._bundle
        if bundle is None or _valid_now(bundle) == self._valid:
            return False
        log.info("trusted certificates became valid or expired: trust set re-evaluated")
        self.apply(bundle)
        self._valid = _valid_now(bundle)
        return True


def _valid_now(bundle: CertBundle | None) -> frozenset[str]:
    """Fingerprints of the bundle's trusted certificates that are valid at this moment, and
    whether its server certificate is: one refused before its notBefore (a staged rotation)
    is put in service when it becomes valid, with no change of the source to tell."""
    if bundle is None:
        return frozenset()
    valid = {t.fingerprint for t in bundle.currently_valid()}
    try:
        server = x509.load_pem_x509_certificate(bundle.server_chain_pem)
    except ValueError:
        return frozenset(valid)
    if server.not_valid_before_utc <= datetime.now(UTC) <= server.not_valid_after_utc:
        valid.add("server certificate")
    return frozenset(valid)


def warn_expiring(bundle: CertBundle) -> None:
    """Log a warning for the server certificate and each trusted one that expires soon."""
    now = datetime.now(UTC)
    horizon = now + EXPIRY_WARNING
    try:
        server = x509.load_pem_x509_certificate(bundle.server_chain_pem)
    except ValueError:
        server = None  # server_context() reports an unusable chain
    # One expired already was refused (net/tls.py): it is not the one in service.
    if server is not None and now <= server.not_valid_after_utc < horizon:
        log.warning(
            "server certificate expires soon",
            extra={
                "certificate": common_name(server),
                "not_after": server.not_valid_after_utc.isoformat(),
            },
        )
    for entry in bundle.currently_valid():
        if entry.certificate.not_valid_after_utc < horizon:
            log.warning(
                "trusted certificate expires soon",
                extra={
                    "certificate": entry.name,
                    "not_after": entry.certificate.not_valid_after_utc.isoformat(),
                },
            )
