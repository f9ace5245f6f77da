"""A trusted certificate below OpenSSL's security level (a 1024-bit RSA key, a 192-bit curve)
enters the trust set, yet every handshake with it fails ("EE certificate key too weak"):
building the listener's context from such a set says so, naming the entry."""

from __future__ import annotations

import logging
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from mimic_server.certs import devpki
from mimic_server.certs.directory import DirectorySource
from mimic_server.net.tls import server_context

WARNING = "trusted certificate below OpenSSL's security level: its handshakes will fail"


def _self_signed(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
                 ca: bool = False) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Doe^Jane ward 3")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(Encoding.PEM))


def test_a_trusted_certificate_below_the_security_level_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = devpki.init(tmp_path / "certs")
    trusted, cas = pki.directory / "trusted", pki.directory / "trusted-ca"
    _self_signed(trusted / "old-ct.pem", rsa.generate_private_key(65537, 1024))
    _self_signed(trusted / "old-us.pem", ec.generate_private_key(ec.SECP192R1()))
    _self_signed(trusted / "new-mr.pem", rsa.generate_private_key(65537, 2048))
    _self_signed(trusted / "new-dx.pem", ec.generate_private_key(ec.SECP256R1()))
    _self_signed(cas / "old-partner.pem", rsa.generate_private_key(65537, 1024), ca=True)
    with caplog.at_level(logging.WARNING, logger="mimic_server.net.tls"):
        server_context(DirectorySource(pki.directory).load())
    warned = [r for r in caplog.records if r.getMessage() == WARNING]
    assert sorted((r.certificate, r.kind) for r in warned) == [  # type: ignore[attr-defined]
        ("old-ct", "client"), ("old-partner", "ca"), ("old-us", "client")]
    assert all(r.levelno == logging.WARNING for r in warned)
    assert all(r.reason == "ee_key_too_small" for r in warned)  # type: ignore[attr-defined]
    # the entry's name, not the certificate's subject
    assert not [r for r in warned if "Doe^Jane" in str(vars(r))]


def _sha1_signed(directory: Path, name: str, ca: bool) -> Path:
    """A certificate signed with SHA-1 by a CA of its own (openssl: cryptography refuses
    SHA-1 signatures), as an old modality's or an old partner's intermediate CA is."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    directory.mkdir(parents=True, exist_ok=True)
    issuer, key, csr = tmp = [directory / f"{name}.{s}" for s in ("issuer.pem", "key", "csr")]
    issuer_key = directory / f"{name}.issuer.key"
    extensions = directory / f"{name}.ext"
    extensions.write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n"
                          if ca else "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(issuer_key),
        "-out", str(issuer), "-subj", "/CN=issuer", "-days", "30", "-sha256")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", f"/CN={name}")
    certificate = directory / f"{name}.pem"
    run("x509", "-req", "-in", str(csr), "-CA", str(issuer), "-CAkey", str(issuer_key),
        "-set_serial", "7", "-out", str(certificate), "-days", "30", "-sha1",
        "-extfile", str(extensions))
    for path in (*tmp, issuer_key, extensions):
        path.unlink()
    return certificate


def test_a_trusted_certificate_signed_with_sha1_is_not_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A trusted entry is a trust anchor: OpenSSL checks its key against the security level
    but not the signature its issuer made (a pinned modality certificate signed with SHA-1,
    an intermediate CA so signed and trusted as a whole: their handshakes succeed). The
    probe loads it as a certificate of its own, which OpenSSL refuses for that signature
    (CA_MD_TOO_WEAK): each was warned of as one whose handshakes will fail."""
    pki = devpki.init(tmp_path / "certs")
    trusted, cas = pki.directory / "trusted", pki.directory / "trusted-ca"
    _sha1_signed(trusted, "old-cr", ca=False)
    _sha1_signed(cas, "old-intermediate", ca=True)
    with caplog.at_level(logging.WARNING, logger="mimic_server.net.tls"):
        server_context(DirectorySource(pki.directory).load())
    assert [vars(r) for r in caplog.records if r.getMessage() == WARNING] == []
