"""Fixtures for Key Vault tests: the vault double, the managed identity, a small PKI."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from tests.identity_double import IdentityDouble
from tests.keyvault_double import KeyVaultDouble
from tests.support import write_cert


@dataclass
class Pki:
    """A test CA and helpers to issue from it; files land in ``directory``."""

    directory: Path
    ca: x509.Certificate
    ca_key: rsa.RSAPrivateKey

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    def issue(
        self, name: str, **kwargs: object
    ) -> tuple[Path, Path, x509.Certificate, rsa.RSAPrivateKey]:
        issuer = (self.ca, self.ca_key)
        return write_cert(self.directory, name, issuer=issuer, **kwargs)  # type: ignore[arg-type]


def pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(Encoding.PEM).decode()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    _, _, ca, ca_key = write_cert(tmp_path / "pki", "ca", ca=True)
    return Pki(tmp_path / "pki", ca, ca_key)


@pytest.fixture
def identity() -> Iterator[IdentityDouble]:
    double = IdentityDouble().start()
    yield double
    double.stop()


@pytest.fixture
def vault(
    tmp_path: Path, identity: IdentityDouble, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KeyVaultDouble]:
    """A running vault double; this process trusts its HTTPS and has a managed identity."""
    double = KeyVaultDouble(tmp_path / "vault-tls").start()
    for key, value in identity.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(double.ca_bundle))
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "MSI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    yield double
    double.stop()
