"""The PEM directory certificate source (embedded mode); layout in :mod:`.devpki`.

Each trust entry (``NAME.pem`` and its binding ``NAME.json``) is read on its own: one that
cannot be read or parsed (a DER file named .pem, a copy being written, a mode that denies
reading) fails that entry alone, never the directory. A revocation must not be held back by
an unrelated file.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Literal

from cryptography import x509

from mimic_server.certs import CertBundle, TrustedCertificate
from mimic_server.certs.devpki import read_binding, read_entry_binding
from mimic_server.errors import ConfigurationError

log = logging.getLogger(__name__)


class _Unreadable(Exception):
    """One file of a trust entry that cannot be read or parsed."""

    def __init__(self, file: str, error: str) -> None:
        super().__init__(f"{file}: {error}")
        self.file, self.error = file, error


class DirectorySource:
    """Reads ``server/`` for the server identity and ``trusted/``, ``trusted-ca/`` for trust."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: The server's chain and key as last read: kept while the files cannot be read.
        self._server: tuple[bytes, bytes] | None = None
        #: Each entry ("trusted/NAME") as the last load gave it: kept while it cannot be read.
        self._entries: dict[str, tuple[TrustedCertificate, ...]] = {}

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
        """Path, mtime, size and mode of each file: a file made readable again (chmod) is
        read at the next poll, not at its next edit."""
        digest = hashlib.sha256()
        for path in self._files():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            digest.update(f"{path}:{stat.st_mtime_ns}:{stat.st_size}:{stat.st_mode}\n".encode())
        return digest.hexdigest()

    def load(self) -> CertBundle:
        chain, key = self._identity()
        entries: dict[str, tuple[TrustedCertificate, ...]] = {}
        for folder, kind in (("trusted", "client"), ("trusted-ca", "ca")):
            path = self.directory / folder
            if not path.is_dir():
                continue
            for pem in sorted(path.glob("*.pem")):
                entry = f"{folder}/{pem.stem}"
                try:
                    entries[entry] = _read_entry(pem, kind, folder)
                except FileNotFoundError:
                    continue  # removed since it was listed: revoked
                except _Unreadable as exc:
                    kept = self._entries.get(entry)
                    log.error(
                        "trusted file cannot be read; its entry keeps what was last read of it"
                        if kept else "trusted file cannot be read; its entry is not trusted",
                        extra={"file": exc.file, "error": exc.error},
                    )
                    if kept:
                        entries[entry] = kept
        self._entries = entries
        return CertBundle(chain, key, tuple(t for group in entries.values() for t in group))

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
            try:
                titles = frozenset(read_binding(pem.with_suffix(".json")))
            except (ConfigurationError, OSError):
                # A binding written under looser rules (a title no peer can send) or not
                # readable: the certificate is still shown, without titles.
                titles = frozenset()
            found.extend(TrustedCertificate(name, "client", cert, titles) for cert in certs)
        return tuple(found)


def _read_entry(
    pem: Path, kind: Literal["client", "ca"], folder: str
) -> tuple[TrustedCertificate, ...]:
    """One entry: the certificates of ``NAME.pem`` with the binding of ``NAME.json``.

    A binding that cannot be read fails the entry as its certificate would: read as no
    binding, it would admit any calling AE title and the default services."""
    try:
        certs = x509.load_pem_x509_certificates(pem.read_bytes())
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _Unreadable(f"{folder}/{pem.name}", exc.strerror or type(exc).__name__) from exc
    except ValueError as exc:
        raise _Unreadable(f"{folder}/{pem.name}", "not a PEM certificate") from exc
    binding = pem.with_suffix(".json")
    try:
        titles, rule = read_entry_binding(binding)
    except ConfigurationError as exc:
        raise _Unreadable(f"{folder}/{binding.name}", str(exc)) from exc
    except Exception as exc:  # whatever a file holds fails its entry alone
        # (JSON nested past the recursion limit, a number past every bound): any other
        # exception failed the whole load, and held every revocation back.
        raise _Unreadable(f"{folder}/{binding.name}", type(exc).__name__) from exc
    return tuple(TrustedCertificate(pem.stem, kind, cert, titles, rule) for cert in certs)
