"""Trust changes against associations in every state, in-process (the real Archive, its
directory source and watcher): a revocation applied while an association is being
admitted, a CA replaced under the same name, and a CA certificate presented as a modality's."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mimic_server.app import Archive
from mimic_server.certs import devpki
from mimic_server.config import Settings
from tests.support import (
    HOST,
    associate,
    client_context,
    dev_ca,
    first_client_context,
    wait_for,
    write_cert,
)


def _archive(tmp_path: Path, refresh: str) -> Archive:
    archive = Archive(Settings(data_dir=tmp_path / "data", host=HOST, port=0, ops_port=0,
                               cert_refresh_seconds=refresh))
    archive.start()
    return archive


def _echoes(archive: Archive, context: Callable[[], Any]) -> bool:
    assoc = associate(archive.address[1], context())
    if not assoc.is_established:
        return False
    answered = getattr(assoc.send_c_echo(), "Status", None) == 0  # none: aborted meanwhile
    if assoc.is_established:
        assoc.release()
    return answered


def _trust_ca(archive: Archive, ca: x509.Certificate) -> None:
    directory = archive.settings.data_dir / "certs" / "trusted-ca"
    directory.mkdir(exist_ok=True)
    (directory / ".partner.tmp").write_bytes(ca.public_bytes(Encoding.PEM))
    (directory / ".partner.tmp").replace(directory / "partner.pem")


def test_a_revocation_applied_while_an_association_is_admitted_refuses_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The handshake identified the peer by the trust set of the moment; the revocation
    is applied before the association's thread exists, so that the change's sweep of the
    associations cannot see it: its A-ASSOCIATE-RQ is rejected (1/1/1), trust being checked
    again, logged and audited."""
    caplog.set_level(logging.WARNING, logger="mimic_server.dimse.association")
    archive = _archive(tmp_path, "3600")
    try:
        assert archive.server is not None and archive.watcher is not None
        before = archive.server.trust
        applied: list[bool] = []
        identify = before.identify

        def identify_then_revoked(der: bytes) -> Any:
            identity = identify(der)
            if not applied:  # the watcher, as it can land right here
                devpki.revoke(archive.settings.data_dir / "certs", "modality1")
                archive._apply_bundle(archive.watcher.source.load())
                applied.append(archive.server.trust is not before)
            return identity

        before.identify = identify_then_revoked  # type: ignore[method-assign]
        assoc = associate(archive.address[1], first_client_context(archive.settings.data_dir))
        assert applied == [True]
        assert not assoc.is_established
        assert assoc.is_rejected
        rejected = [r for r in caplog.records if r.getMessage() == "association rejected"]
        assert [(r.reason, r.reject) for r in rejected] == [  # type: ignore[attr-defined]
            ("certificate no longer trusted", "1/1/1")]
    finally:
        archive.stop(0)
    assert "certificate no longer trusted" in archive.settings.audit_path.read_text()


def test_associations_of_a_replaced_ca_are_aborted(tmp_path: Path) -> None:
    """An operator replaces a partner's CA under the same name (the old one retired): new
    associations from what the old CA issued are refused, and so are the open ones."""
    archive = _archive(tmp_path, "1")
    try:
        pki = tmp_path / "pki"
        _, _, old_ca, old_key = write_cert(pki, "partner-ca-1", ca=True)
        _, _, new_ca, _ = write_cert(pki, "partner-ca-2", ca=True)
        cert, key, _, _ = write_cert(pki, "ct-room", issuer=(old_ca, old_key))

        def context() -> Any:
            return client_context(cert, key, archive.settings.data_dir / "certs/ca/ca.pem")

        _trust_ca(archive, old_ca)
        assert wait_for(lambda: _echoes(archive, context), timeout=10)
        assoc = associate(archive.address[1], context())
        assert assoc.is_established
        _trust_ca(archive, new_ca)
        assert wait_for(lambda: not _echoes(archive, context), timeout=10)
        assert wait_for(lambda: assoc.is_aborted, timeout=10)
    finally:
        archive.stop(0)


def test_a_ca_certificate_is_no_modalitys(tmp_path: Path) -> None:
    """A sub-CA certificate (CA:TRUE, no Key Usage, which OpenSSL's client check lets
    through) issued by a CA trusted as a whole is refused as a client certificate."""
    archive = _archive(tmp_path, "1")
    try:
        pki = tmp_path / "pki"
        _, _, ca, ca_key = write_cert(pki, "partner-ca", ca=True)
        sub_cert, sub_key, _, _ = write_cert(pki, "partner-sub-ca", issuer=(ca, ca_key), ca=True)
        leaf_cert, leaf_key, _, _ = write_cert(pki, "ct-room", issuer=(ca, ca_key))
        ca_file = archive.settings.data_dir / "certs/ca/ca.pem"
        _trust_ca(archive, ca)
        assert wait_for(lambda: _echoes(archive, lambda: client_context(
            leaf_cert, leaf_key, ca_file)), timeout=10)  # the CA is trusted by now
        time.sleep(0.2)
        assert not _echoes(archive, lambda: client_context(sub_cert, sub_key, ca_file))
    finally:
        archive.stop(0)


def test_a_ca_renewed_with_its_key_keeps_what_it_issued(tmp_path: Path) -> None:
    """A CA certificate issued again with the same subject and key (a renewal, a new Key
    Vault version) still vouches for the open associations of what it issued."""
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import hashes

    from mimic_server.certs import CertBundle, TrustedCertificate
    from mimic_server.certs.trust import TrustIndex

    _, _, ca, ca_key = write_cert(tmp_path, "site-ca", ca=True)
    _, _, client, _ = write_cert(tmp_path, "ct02", issuer=(ca, ca_key))
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.subject)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=1))
               .not_valid_after(now + timedelta(days=3650)))
    for extension in ca.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    renewed = builder.sign(ca_key, hashes.SHA256())
    der = client.public_bytes(Encoding.DER)
    identity = TrustIndex(CertBundle(b"", b"", (TrustedCertificate("site-ca", "ca", ca),))
                          ).identify(der)
    assert identity is not None
    after = TrustIndex(CertBundle(b"", b"", (TrustedCertificate("site-ca", "ca", renewed),)))
    assert after.identify(der) is not None
    assert after.still_trusts(identity)


def test_a_pinned_self_signed_certificate_saying_ca_true_is_trusted(tmp_path: Path) -> None:
    """``openssl req -x509`` (its default configuration) makes a self-signed certificate
    with CA:TRUE: the usual certificate of a modality, pinned by the operator. Pinned, it is
    trusted; only one issued by a CA trusted as a whole must not be a CA."""
    import subprocess

    archive = _archive(tmp_path, "1")
    try:
        cert, key = tmp_path / "ct02.pem", tmp_path / "ct02.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "30", "-subj", "/CN=ct02", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        assert x509.load_pem_x509_certificate(cert.read_bytes()).extensions \
            .get_extension_for_class(x509.BasicConstraints).value.ca
        trusted = archive.settings.data_dir / "certs" / "trusted"
        (trusted / ".ct02.tmp").write_bytes(cert.read_bytes())
        (trusted / ".ct02.tmp").replace(trusted / "ct02.pem")
        ca_file = archive.settings.data_dir / "certs/ca/ca.pem"
        assert wait_for(lambda: _echoes(archive, lambda: client_context(cert, key, ca_file)),
                        timeout=15)
    finally:
        archive.stop(0)


def test_a_ca_in_a_pinned_entrys_chain_is_no_modality(tmp_path: Path) -> None:
    """A full chain pasted as a modality's entry pins its issuing CA too: only a certificate
    pinned alone may say CA:TRUE, so the CA's key holder is not taken for the modality."""
    archive = _archive(tmp_path, "1")
    try:
        pki = tmp_path / "pki"
        ca_path, ca_key_path, ca, ca_key = write_cert(pki, "hospital-ca", ca=True)
        leaf_path, leaf_key_path, leaf, _ = write_cert(pki, "ct-room", issuer=(ca, ca_key))
        trusted = archive.settings.data_dir / "certs" / "trusted"
        (trusted / ".ct.tmp").write_bytes(leaf.public_bytes(Encoding.PEM)
                                          + ca.public_bytes(Encoding.PEM))
        (trusted / ".ct.tmp").replace(trusted / "ct-room.pem")
        ca_file = archive.settings.data_dir / "certs/ca/ca.pem"
        assert wait_for(lambda: _echoes(archive, lambda: client_context(
            leaf_path, leaf_key_path, ca_file)), timeout=15)  # the leaf: trusted, as meant
        time.sleep(0.2)
        assert not _echoes(archive, lambda: client_context(ca_path, ca_key_path, ca_file))
    finally:
        archive.stop(0)


def _key_not_its_own(certs: Path, tmp_path: Path) -> None:
    """A rotation botched: a new certificate with a key that is not its own."""
    new_cert, _, _, _ = write_cert(tmp_path / "new", "server", issuer=dev_ca(certs), server=True)
    _, other_key, _, _ = write_cert(tmp_path / "new", "other", issuer=dev_ca(certs), server=True)
    (certs / "server" / "server.key").write_bytes(other_key.read_bytes())
    (certs / "server" / "server.pem").write_bytes(new_cert.read_bytes())


def _key_removed(certs: Path, tmp_path: Path) -> None:
    (certs / "server" / "server.key").unlink()


def _outside_validity(not_before: timedelta, not_after: timedelta) -> Callable[[Path, Path], None]:
    """A new pair whose certificate is expired already, or not valid yet."""

    def rotate(certs: Path, tmp_path: Path) -> None:
        now = datetime.now(UTC)
        cert, key, _, _ = write_cert(tmp_path / "new", "server", issuer=dev_ca(certs),
                                     server=True, not_before=now + not_before,
                                     not_after=now + not_after)
        (certs / "server" / "server.key").write_bytes(key.read_bytes())
        (certs / "server" / "server.pem").write_bytes(cert.read_bytes())

    return rotate


_expired = _outside_validity(timedelta(days=-30), timedelta(days=-1))
_not_yet_valid = _outside_validity(timedelta(days=1), timedelta(days=30))


def _key_encrypted(certs: Path, tmp_path: Path) -> None:
    """A pass phrase protected key (a common CA deliverable): no prompt, refused at once."""
    from cryptography.hazmat.primitives import serialization

    cert, _, _, key = write_cert(tmp_path / "new", "server", issuer=dev_ca(certs),
                                 server=True)
    (certs / "server" / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass phrase")))
    (certs / "server" / "server.pem").write_bytes(cert.read_bytes())


@pytest.mark.parametrize("break_server", [_key_not_its_own, _key_removed, _expired,
                                          _not_yet_valid, _key_encrypted],
                         ids=["key not its own", "key removed", "expired", "not yet valid",
                              "key encrypted"])
def test_a_server_certificate_refused_holds_no_revocation_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
    break_server: Callable[[Path, Path], None],
) -> None:
    """The server certificate in service is kept when its replacement cannot be served,
    logged at ERROR; the trusted set changed with it is applied all the same: the revoked
    modality's open association is aborted (audited), its new ones refused."""
    archive, certs, other = _with_modality2(tmp_path)
    try:
        assert archive.watcher is not None

        def modality2() -> Any:
            return client_context(other.cert, other.key, certs / "ca" / "ca.pem")

        def served() -> bytes:
            return _served(archive, modality2())

        in_service = served()
        revoked = associate(archive.address[1], first_client_context(archive.settings.data_dir))
        assert revoked.is_established
        break_server(certs, tmp_path)
        devpki.revoke(certs, "modality1")
        with caplog.at_level(logging.ERROR):
            assert archive.watcher.poll()
        assert wait_for(lambda: revoked.is_aborted, timeout=10)
        assert not _echoes(archive, lambda: first_client_context(archive.settings.data_dir))
        assert served() == in_service
        assert _echoes(archive, modality2)
        assert [r for r in caplog.records if r.levelno == logging.ERROR and (
            "the one in service is kept" in r.getMessage())]
    finally:
        archive.stop(0)
    audit = archive.settings.audit_path.read_text()
    assert "associations of certificates no longer trusted were aborted" in audit


def _unread(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The files the certificate source logged at ERROR as unreadable."""
    return [getattr(r, "file", "") for r in caplog.records
            if r.levelno == logging.ERROR and r.name == "mimic_server.certs.directory"]


def _any_certificate(path: Path) -> bytes:
    return (path.parent.parent / "ca" / "ca.pem").read_bytes()


def _der_named_pem(path: Path) -> None:
    path.write_bytes(x509.load_pem_x509_certificate(_any_certificate(path))
                     .public_bytes(Encoding.DER))


def _truncated(path: Path) -> None:
    path.write_bytes(_any_certificate(path)[:300])


def _unreadable(path: Path) -> None:
    """An OSError on read: a directory under the file's name (root reads a mode 000 file)."""
    path.mkdir()


def _bad_binding(path: Path) -> None:
    path.with_suffix(".json").write_text('{"ae_titles": ["ST')
    path.write_bytes(_any_certificate(path))


@pytest.mark.parametrize("spoil", [_der_named_pem, _truncated, _unreadable, _bad_binding],
                         ids=["DER named .pem", "truncated", "unreadable", "bad binding"])
def test_a_bad_file_in_trusted_holds_no_revocation_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, spoil: Callable[[Path], None]
) -> None:
    """A file of trusted/ that cannot be read fails its own entry only (ERROR naming it):
    modality1 revoked meanwhile has its open association aborted, its new ones refused."""
    archive, certs, other = _with_modality2(tmp_path)
    try:
        assert archive.watcher is not None
        revoked = associate(archive.address[1], first_client_context(archive.settings.data_dir))
        assert revoked.is_established
        spoil(certs / "trusted" / "stray.pem")
        devpki.revoke(certs, "modality1")
        with caplog.at_level(logging.ERROR):
            assert archive.watcher.poll()
        assert wait_for(lambda: revoked.is_aborted, timeout=10)
        assert not _echoes(archive, lambda: first_client_context(archive.settings.data_dir))
        assert _echoes(archive, lambda: client_context(other.cert, other.key,
                                                       certs / "ca" / "ca.pem"))
        assert _unread(caplog) in (["trusted/stray.pem"], ["trusted/stray.json"])
    finally:
        archive.stop(0)


def test_a_trusted_file_unreadable_mid_run_keeps_its_modality_until_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """modality2's file half rewritten (a copy, not atomic): its open association stays
    open and it is still admitted, while the revocation of modality1 in the same refresh
    applies; once the file is removed, modality2's association is aborted."""
    archive, certs, other = _with_modality2(tmp_path)
    try:
        assert archive.watcher is not None

        def modality2() -> Any:
            return client_context(other.cert, other.key, certs / "ca" / "ca.pem")

        kept = associate(archive.address[1], modality2())
        revoked = associate(archive.address[1], first_client_context(archive.settings.data_dir))
        assert kept.is_established and revoked.is_established
        pem = certs / "trusted" / "modality2.pem"
        pem.write_bytes(pem.read_bytes()[:200])
        devpki.revoke(certs, "modality1")
        with caplog.at_level(logging.ERROR):
            assert archive.watcher.poll()
        assert wait_for(lambda: revoked.is_aborted, timeout=10)
        assert kept.is_established
        assert getattr(kept.send_c_echo(), "Status", None) == 0
        assert _echoes(archive, modality2)
        assert _unread(caplog) == ["trusted/modality2.pem"]
        pem.unlink()
        assert archive.watcher.poll()
        assert wait_for(lambda: kept.is_aborted, timeout=10)
        assert not _echoes(archive, modality2)
    finally:
        archive.stop(0)


def test_a_staged_server_certificate_is_served_once_it_is_valid(tmp_path: Path) -> None:
    """Installed before its notBefore (a staged rotation, an issuer's clock ahead), a new
    server certificate is refused and the one in service kept; once it becomes valid it is
    put in service with no change of the source to tell (the watcher looked only at the
    trusted certificates' validity, and the old one stayed until it expired)."""
    archive, certs, other = _with_modality2(tmp_path)
    try:
        assert archive.watcher is not None

        def served() -> int:
            der = _served(archive, client_context(other.cert, other.key,
                                                  certs / "ca" / "ca.pem"))
            return x509.load_der_x509_certificate(der).serial_number

        old = served()
        now = datetime.now(UTC)
        cert, key, _, _ = write_cert(tmp_path / "new", "server", issuer=dev_ca(certs),
                                     server=True, not_before=now + timedelta(seconds=2),
                                     not_after=now + timedelta(days=365))
        (certs / "server" / "server.key").write_bytes(key.read_bytes())
        (certs / "server" / "server.pem").write_bytes(cert.read_bytes())
        archive.watcher.poll()
        assert served() == old  # not valid yet: refused, the old one kept
        new = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
        assert wait_for(lambda: archive.watcher.poll() and served() == new, timeout=15)
    finally:
        archive.stop(0)


def _served(archive: Archive, context: Any) -> bytes:
    """The server certificate (DER) an association made with ``context`` is served."""
    assoc = associate(archive.address[1], context)
    assert assoc.is_established
    der = assoc.dul.socket.socket.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assoc.release()
    return der  # type: ignore[no-any-return]


def _with_modality2(tmp_path: Path) -> tuple[Archive, Path, Any]:
    """An archive whose watcher the test polls, its certificate directory, and a second
    client trusted (modality2: the one that stays trusted while the test changes things)."""
    archive = _archive(tmp_path, "3600")
    certs = archive.settings.data_dir / "certs"
    assert archive.watcher is not None
    other = devpki.issue_client(certs, "modality2")
    assert archive.watcher.poll()
    return archive, certs, other


@pytest.mark.parametrize("trusted_by", ["a trusted CA", "its pinned entry"])
def test_an_association_is_aborted_when_its_certificate_expires(
    tmp_path: Path, trusted_by: str
) -> None:
    """A client certificate that expires while its association is open: the association is
    aborted within a refresh period, whether the certificate was pinned or issued by a CA
    trusted as a whole. A pinned one leaves the trust set as it expires and was aborted;
    one a trusted CA issued is in no trust set, only its CA was checked, and its
    association went on after the certificate had expired."""
    archive = _archive(tmp_path, "1")
    try:
        pki = tmp_path / "pki"
        ca_file = archive.settings.data_dir / "certs/ca/ca.pem"
        expiry = datetime.now(UTC) + timedelta(seconds=8)
        if trusted_by == "a trusted CA":
            _, _, ca, ca_key = write_cert(pki, "partner-ca", ca=True)
            cert, key, _, _ = write_cert(pki, "ct-room", issuer=(ca, ca_key), not_after=expiry)
            _trust_ca(archive, ca)
        else:
            cert, key, leaf, _ = write_cert(pki, "ct-room", not_after=expiry,
                                            issuer=dev_ca(archive.settings.data_dir / "certs"))
            trusted = archive.settings.data_dir / "certs" / "trusted"
            (trusted / ".ct-room.tmp").write_bytes(leaf.public_bytes(Encoding.PEM))
            (trusted / ".ct-room.tmp").replace(trusted / "ct-room.pem")

        def context() -> Any:
            return client_context(cert, key, ca_file)

        assert wait_for(lambda: _echoes(archive, context), timeout=5)
        assoc = associate(archive.address[1], context())
        assert assoc.is_established
        time.sleep(max(0.0, (expiry - datetime.now(UTC)).total_seconds() - 1.5))
        assert assoc.is_established  # not before its expiry
        assert wait_for(lambda: assoc.is_aborted, timeout=6)
    finally:
        archive.stop(0)
