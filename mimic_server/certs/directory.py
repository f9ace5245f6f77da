"""The PEM directory certificate source (embedded mode); layout in :mod:`.devpki`."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from cryptography import x509

from mimic_server.certs import CertBundle, TrustedCertificate
from mimic_server.certs.devpki import read_binding, read_rule
from mimic_server.errors import ConfigurationError

log = logging.getLogger(__name__)


class DirectorySource:
    """Reads ``server/`` for the server identity and ``trusted/``, ``trusted-ca/`` for trust."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: The server's chain and key as last read: kept while the files cannot be read.
        self._server: tuple[bytes, bytes] | None = None

    def describe(self) -> str:
        return f"directory {self.directory}"

    def _files(self) -> list[Path]:
        files = [self.directory / "server" / "server.pem", self.directory / "server" / "server.key"]
        for folder in ("trusted", "trusted-ca"):
            path = self.directory / folder
            if path.is_dir():
                files.extend(sorted(p for p in path.iterdir() if p.suffix in (".pem", ".json")))
        return files

    def version(self) -> str:
        digest = hashlib.sha256()
        for path in self._files():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            digest.update(f"{path}:{stat.st_mtime_ns}:{stat.st_size}\n".encode())
        return digest.hexdigest()

    def load(self) -> CertBundle:
        chain, key = self._identity()
        trusted: list[TrustedCertificate] = []
        for folder, kind in (("trusted", "client"), ("trusted-ca", "ca")):
            path = self.directory / folder
            if not path.is_dir():
                continue
            for pem in sorted(path.glob("*.pem")):
                try:
                    certs = x509.load_pem_x509_certificates(pem.read_bytes())
                except (OSError, ValueError) as exc:
                    raise ConfigurationError(f"{pem} is not a PEM certificate") from exc
                titles = frozenset(read_binding(pem.with_suffix(".json")))
                rule = read_rule(pem.with_suffix(".json"), pem.stem)
                trusted.extend(
                    TrustedCertificate(pem.stem, kind, cert, titles, rule)  # type: ignore[arg-type]
                    for cert in certs
                )
        return CertBundle(chain, key, tuple(trusted))

    def _identity(self) -> tuple[bytes, bytes]:
        """``server.pem`` and ``server.key``; once read, files that cannot be read (removed
        mid-rotation) keep the last pair, logged: the trusted set is read all the same, so
        that a fault of the server's identity never holds a revocation back."""
        server = self.directory / "server"
        try:
            chain = (server / "server.pem").read_bytes()
            self._server = chain, (server / "server.key").read_bytes()
        except OSError as exc:
            error = f"cannot read the server certificate in {server}: {exc.strerror}"
            if self._server is None:
                raise ConfigurationError(error) from exc
            log.error("server certificate cannot be loaded; the one in service is kept",
                      extra={"error": error})
        return self._server

    def revoked(self) -> tuple[TrustedCertificate, ...]:
        """The entries ``mimic certs revoke`` took out (``revoked/NAME.STAMP.pem``), newest
        stamp first, for the operator console; never part of a bundle."""
        path = self.directory / "revoked"
        if not path.is_dir():
            return ()
        found: list[TrustedCertificate] = []
        for pem in sorted(path.glob("*.pem"), reverse=True):
            name = pem.stem.rsplit(".", 1)[0]
            try:
                certs = x509.load_pem_x509_certificates(pem.read_bytes())
            except (OSError, ValueError):
                continue  # an unreadable leftover: nothing to show
            titles = frozenset(read_binding(pem.with_suffix(".json")))
            found.extend(TrustedCertificate(name, "client", cert, titles) for cert in certs)
        return tuple(found)
