"""Every refusal of a real ``mimic serve`` process, with pynetdicom, Python ``ssl`` and dcmtk.

Deny by default (DESIGN.md, invariant 4): a peer without a trusted, valid client certificate
never reaches DICOM at all; a trusted peer that calls with the wrong AE titles gets an
A-ASSOCIATE-RJ with the DICOM reason; a dataset we cannot keep gets a C-STORE failure status
with an Error Comment. Each test checks the answer at the level where the refusal happens
(TLS alert, A-ASSOCIATE-RJ, DIMSE status) AND that nothing reached the archive: the index has
no new instance and the object store no new file (invariant 1).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom.association import Association
from pynetdicom.dsutils import encode, split_dataset

from tests.data import ct_small
from tests.support import (
    HOST,
    MimicProcess,
    associate,
    client_context,
    dcmtk,
    dcmtk_tls,
    dev_ca,
    wait_for,
    write_cert,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

#: The OpenSSL alerts a client sees when the server refuses its certificate. Under TLS 1.3
#: the client's handshake "succeeds" before the server has checked the certificate, so the
#: alert arrives on the first read; under TLS 1.2 it arrives in the handshake itself.
UNKNOWN_CA = "TLSV1_ALERT_UNKNOWN_CA"
CERTIFICATE_REQUIRED = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
CERTIFICATE_EXPIRED = "SSLV3_ALERT_CERTIFICATE_EXPIRED"
PROTOCOL_VERSION = "TLSV1_ALERT_PROTOCOL_VERSION"


# -- helpers ------------------------------------------------------------------------------


@contextlib.contextmanager
def nothing_stored(server: MimicProcess) -> Iterator[None]:
    """Assert that the block adds no index row and no object file."""
    count, objects = server.instance_count(), server.stored_objects()
    yield
    assert server.instance_count() == count, "a refused request left an index row"
    assert server.stored_objects() == objects, "a refused request left an object file"


def tls_refusal(port: int, ctx: ssl.SSLContext) -> tuple[ssl.SSLError, int]:
    """Handshake and read once; return the TLS error the server answered and our port.

    A refused peer must get a TLS alert, never a byte of DICOM; the port identifies our
    connection in the server's log.
    """
    with socket.create_connection((HOST, port), timeout=10) as raw:
        local_port = int(raw.getsockname()[1])
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                data = tls.recv(1)
        except ssl.SSLError as exc:
            return exc, local_port
    pytest.fail(f"the server did not refuse the TLS connection (read {data!r})")


def refused_in_log(server: MimicProcess, local_port: int, since: int) -> str:
    """The listener's logged reason for refusing our connection (before any association).

    Refusals are logged as counts: the first of a source and reason in an interval names
    its connection; a repeat within the interval (the module's server is shared) only
    appears in the count line at the interval's end (1 s here, see conftest); ``since`` is
    the number of log entries before our connection."""
    peer = f"{HOST}:{local_port}"

    def named() -> str | None:
        for entry in server.log_entries()[since:]:
            if entry.get("message") == "connection refused" and entry.get("peer") == peer:
                return str(entry.get("reason", ""))
        return None

    def counted() -> str:
        return " | ".join(
            str(entry.get("reason", "")) for entry in server.log_entries()[since:]
            if entry.get("message") == "connection refused" and entry.get("peer") == HOST
        )

    # Our connection's own line, if it was the first of its kind in the interval. A count
    # line may come first (another test's refusals, counted at the end of a worker's
    # interval): it says nothing of ours, so it is read only when no line names us.
    if wait_for(lambda: named() is not None, timeout=3):
        return named() or ""
    time.sleep(2.5)  # past the interval (1 s here): every count line of ours is written
    reasons = counted()
    assert reasons, f"no refusal logged for {peer}"
    return reasons


def assert_never_associated(assoc: Association) -> None:
    """pynetdicom got no A-ASSOCIATE-AC and no A-ASSOCIATE-RJ: the TLS layer refused."""
    assert not assoc.is_established
    assert not assoc.is_rejected, "a refused certificate must not reach the DICOM layer"


def assert_refused_in_handshake(
    server: MimicProcess, ctx: ssl.SSLContext, alerts: tuple[str, ...], logged: str
) -> None:
    """The TLS layer refuses ``ctx``: one of ``alerts`` to the client, ``logged`` in the
    server's reason, no association for a DICOM client, and nothing stored."""
    with nothing_stored(server):
        since = len(server.log_entries())
        error, port = tls_refusal(server.port, ctx)
        assert error.reason in alerts, error
        assert logged in refused_in_log(server, port, since)
        assert_never_associated(associate(server.port, ctx))


def reject_of(assoc: Association) -> tuple[int | None, int | None, int | None]:
    """(result, source, reason) of the A-ASSOCIATE-RJ that pynetdicom received."""
    assert assoc.is_rejected, "no A-ASSOCIATE-RJ"
    reject = assoc.acceptor.primitive
    assert reject is not None
    return reject.result, reject.result_source, reject.diagnostic


def echo_ok(server: MimicProcess, cert: Path, key: Path, calling: str = "MODALITY1") -> bool:
    assoc = associate(server.port, client_context(cert, key, server.ca_cert), calling=calling)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0x0000


def place_trusted(server: MimicProcess, name: str, cert_pem: Path) -> None:
    """Put a PEM into the trusted set the way an operator's tool should: atomically."""
    trusted = server.certs / "trusted"
    tmp = trusted / f".{name}.pem.tmp"
    shutil.copyfile(cert_pem, tmp)
    os.replace(tmp, trusted / f"{name}.pem")


def part10(meta_uid: str, dataset: bytes) -> bytes:
    """A Part 10 file: preamble, File Meta for a CT image with ``meta_uid``, ``dataset`` bytes."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(meta_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid()
    out = BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    return out.getvalue() + dataset


def ct_dataset_bytes(sop_instance_uid: str) -> bytes:
    """CT_small's dataset (explicit VR little endian), with another SOP Instance UID."""
    ds = pydicom.dcmread(ct_small())
    ds.SOPInstanceUID = sop_instance_uid
    encoded = encode(ds, False, True)  # the dataset alone: no preamble, no File Meta
    assert encoded is not None
    return encoded


def send_file(server: MimicProcess, path: Path) -> tuple[int, str]:
    """C-STORE a Part 10 file's dataset bytes as they are; return (status, Error Comment).

    pynetdicom (``STORE_SEND_CHUNKED_DATASET``, set by ``associate``) takes the Affected SOP
    Class / Instance UID from the File Meta and sends the dataset bytes unchanged, so a file
    can carry a request that disagrees with its dataset, or a dataset that is not DICOM.
    """
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    assoc = associate(server.port, ctx, transfer_syntaxes=[ExplicitVRLittleEndian])
    assert assoc.is_established
    try:
        answer = assoc.send_c_store(path)
        # A refused dataset is a DIMSE failure, not the end of the association. (Not checked
        # with a second request: pynetdicom's reactor can swallow the response of a request
        # sent right after another one, "Received unexpected C-ECHO service message".)
        assert assoc.is_established and not assoc.is_aborted
    finally:
        assoc.release()
    assert not assoc.is_aborted
    assert "Status" in answer, "no C-STORE response"
    return int(answer.Status), str(answer.get("ErrorComment", ""))


def indexed(server: MimicProcess, sop_instance_uid: str) -> bool:
    rows = server._query(  # the helper's SQL door; nothing else exposes a lookup by UID
        "SELECT count(*) FROM instances WHERE sop_instance_uid = :uid", uid=sop_instance_uid
    )
    return int(rows[0][0]) > 0


@pytest.fixture(scope="module")
def ct01(server: MimicProcess) -> tuple[Path, Path]:
    """A client bound to calling AE title CT01, issued by the operator's CLI, once trusted."""
    since = server.log_mark()
    result = subprocess.run(
        [
            sys.executable, "-m", "mimic_server", "certs", "issue-client", "ct01",
            "--ae-title", "CT01", "--data-dir", str(server.data_dir),
        ],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    folder = server.certs / "clients" / "ct01"
    cert, key = folder / "client.pem", folder / "client.key"
    assert server.wait_until_trusted(lambda: echo_ok(server, cert, key, calling="CT01"), since)
    return cert, key


# -- certificates -------------------------------------------------------------------------


def test_client_certificate_from_unknown_ca(server: MimicProcess, tmp_path: Path) -> None:
    """A certificate chaining to a CA we never heard of proves nothing about the peer."""
    _, _, ca_cert, ca_key = write_cert(tmp_path, "foreign-ca", ca=True)
    cert, key, _, _ = write_cert(tmp_path, "foreign-client", issuer=(ca_cert, ca_key))
    ctx = client_context(cert, key, server.ca_cert)
    assert_refused_in_handshake(server, ctx, (UNKNOWN_CA,), "CERTIFICATE_VERIFY_FAILED")


def test_self_signed_client_certificate(server: MimicProcess, tmp_path: Path) -> None:
    """Anyone can make a self-signed certificate: it is not trusted unless pinned."""
    cert, key, _, _ = write_cert(tmp_path, "self-signed")
    ctx = client_context(cert, key, server.ca_cert)
    assert_refused_in_handshake(server, ctx, (UNKNOWN_CA,), "CERTIFICATE_VERIFY_FAILED")


def test_no_client_certificate(server: MimicProcess) -> None:
    """Mutual TLS: a client that presents no certificate at all is refused in the handshake."""
    ctx = client_context(None, None, server.ca_cert)
    assert_refused_in_handshake(
        server, ctx, (CERTIFICATE_REQUIRED,), "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    )


def test_expired_certificate_in_the_trusted_set(server: MimicProcess, tmp_path: Path) -> None:
    """An expired certificate stays refused even when an operator drops it into trusted/.

    A fresh certificate placed at the same moment is the control: once it works, the server
    has read the new trusted set, so the expired one was refused with it in view.
    """
    issuer = dev_ca(server.certs)
    now = datetime.now(UTC)
    expired, expired_key, _, _ = write_cert(
        tmp_path, "expired", issuer=issuer,
        not_before=now - timedelta(days=30), not_after=now - timedelta(days=1),
    )
    fresh, fresh_key, _, _ = write_cert(tmp_path, "fresh", issuer=issuer)
    since = server.log_mark()
    place_trusted(server, "expired-client", expired)
    place_trusted(server, "fresh-client", fresh)
    assert server.wait_until_trusted(lambda: echo_ok(server, fresh, fresh_key), since)

    ctx = client_context(expired, expired_key, server.ca_cert)
    assert_refused_in_handshake(
        server, ctx, (UNKNOWN_CA, CERTIFICATE_EXPIRED), "TLS handshake failed"
    )


def test_certificate_of_our_ca_that_is_not_trusted(server: MimicProcess, tmp_path: Path) -> None:
    """Trust is per certificate: being issued by the development CA is not enough."""
    cert, key, _, _ = write_cert(tmp_path, "issued-not-trusted", issuer=dev_ca(server.certs))
    assert echo_ok(server, server.client_cert, server.client_key)  # same CA, trusted: works
    ctx = client_context(cert, key, server.ca_cert)
    assert_refused_in_handshake(server, ctx, (UNKNOWN_CA,), "CERTIFICATE_VERIFY_FAILED")


def _self_signed(directory: Path, name: str, key_size: int,
                 usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
    """A self-signed leaf (to be pinned) with this RSA key size and Extended Key Usage."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize(("key_size", "usage", "why"), [
    pytest.param(1024, ExtendedKeyUsageOID.CLIENT_AUTH, "EE certificate key too weak",
                 id="rsa-1024"),
    pytest.param(2048, ExtendedKeyUsageOID.SERVER_AUTH, "unsuitable certificate purpose",
                 id="server-auth-only"),
])
def test_a_pinned_certificate_tls_refuses_says_why(
    server: MimicProcess, tmp_path: Path, key_size: int, usage: x509.ObjectIdentifier,
    why: str,
) -> None:
    """A certificate the operator pinned in trusted/ that OpenSSL still refuses: a 1024-bit
    RSA key (under OpenSSL's security level), an Extended Key Usage of serverAuth only.
    The trust set counts it, the modality's handshakes fail, and the log said only
    'CERTIFICATE_VERIFY_FAILED', as for a certificate nobody trusted: the operator could not
    tell why. Now the reason carries OpenSSL's verification message."""
    cert, key = _self_signed(tmp_path, f"pinned-{key_size}", key_size, usage)
    fresh, fresh_key, _, _ = write_cert(tmp_path, "fresh-control", issuer=dev_ca(server.certs))
    since = server.log_mark()
    place_trusted(server, f"pinned-{key_size}", cert)
    place_trusted(server, f"fresh-control-{key_size}", fresh)
    assert server.wait_until_trusted(lambda: echo_ok(server, fresh, fresh_key), since)
    # TLS 1.2 at the lowest security level, set before the key is loaded: the client takes
    # a 1024-bit key, and the server's refusal comes in the handshake.
    ctx = client_context(None, None, server.ca_cert, max_version=ssl.TLSVersion.TLSv1_2)
    ctx.load_cert_chain(str(cert), str(key))
    assert_refused_in_handshake(
        server, ctx, ("SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE"),
        f"CERTIFICATE_VERIFY_FAILED ({why})",
    )


# -- transport ----------------------------------------------------------------------------


def test_plain_tcp_association_to_the_tls_port(server: MimicProcess) -> None:
    """No TLS, no association: an A-ASSOCIATE-RQ in clear text is a failed handshake."""

    def clear_text_refusals() -> int:
        return sum(
            int(e.get("count", 1)) for e in server.log_entries()
            if e.get("message") == "connection refused"
            and "WRONG_VERSION_NUMBER" in str(e.get("reason", ""))
        )

    before = clear_text_refusals()
    with nothing_stored(server):
        assoc = associate(server.port, None)
        assert_never_associated(assoc)
        assert assoc.is_aborted
    assert wait_for(lambda: clear_text_refusals() > before, timeout=5), (
        "the clear-text A-ASSOCIATE-RQ was not refused by the TLS layer"
    )


def _tls11_server(cert: Path, key: Path) -> tuple[socket.socket, threading.Thread, list[str]]:
    """A TLS 1.1 server of our own: the control that our client really offers TLS 1.1."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server((HOST, 0))
    listener.settimeout(10)
    versions: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
            versions.append(str(tls.version()))
            tls.recv(1)  # until the client closes: an early EOF would fail openssl's exit code

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread, versions


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_client_is_refused(server: MimicProcess) -> None:
    """BCP 195: TLS 1.2 at least. The client is first shown to speak TLS 1.1 (with Debian's
    OpenSSL it needs SECLEVEL=0), else its refusal would be its own and prove nothing."""
    ctx = client_context(
        server.client_cert, server.client_key, server.ca_cert,
        max_version=ssl.TLSVersion.TLSv1_1,
    )
    listener, thread, versions = _tls11_server(
        server.certs / "server" / "server.pem", server.certs / "server" / "server.key"
    )
    with listener, socket.create_connection(listener.getsockname()[:2], timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.1"
        thread.join(10)
    assert versions == ["TLSv1.1"]

    with nothing_stored(server):
        since = len(server.log_entries())
        with socket.create_connection((HOST, server.port), timeout=10) as raw:
            port = int(raw.getsockname()[1])
            with pytest.raises(ssl.SSLError) as refused:
                ctx.wrap_socket(raw, server_hostname="localhost")  # the handshake itself
        assert refused.value.reason == PROTOCOL_VERSION, refused.value
        assert "UNSUPPORTED_PROTOCOL" in refused_in_log(server, port, since)
        assert_never_associated(associate(server.port, ctx))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_refused_by_openssl_s_client(server: MimicProcess) -> None:
    """The same with ``openssl s_client``, judged by its exit code and the alert: it prints a
    'Protocol : TLSv1.1' line even when the handshake failed. The control is the same command
    completing a TLS 1.1 handshake with a TLS 1.1 server of our own."""

    def s_client(port: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "openssl", "s_client", "-connect", f"{HOST}:{port}", "-tls1_1",
                "-cipher", "DEFAULT:@SECLEVEL=0", "-servername", "localhost",
                "-cert", str(server.client_cert), "-key", str(server.client_key),
                "-CAfile", str(server.ca_cert),
            ],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )

    listener, thread, versions = _tls11_server(
        server.certs / "server" / "server.pem", server.certs / "server" / "server.key"
    )
    with listener:
        control = s_client(int(listener.getsockname()[1]))
        thread.join(10)
    assert control.returncode == 0, control.stderr
    assert versions == ["TLSv1.1"]

    with nothing_stored(server):
        refused = s_client(server.port)
    assert refused.returncode != 0, refused.stdout
    assert "alert protocol version" in refused.stderr, refused.stderr


# -- association --------------------------------------------------------------------------


def test_calling_ae_title_not_bound_to_the_certificate(
    server: MimicProcess, ct01: tuple[Path, Path]
) -> None:
    """A certificate bound to CT01 may not call as another AE: A-ASSOCIATE-RJ, permanent,
    service user, 'calling AE title not recognized' (PS3.8 Table 9-21: 1, 1, 3)."""
    cert, key = ct01
    ctx = client_context(cert, key, server.ca_cert)
    with nothing_stored(server):
        assoc = associate(server.port, ctx, calling="OTHER")
        assert assoc.is_rejected
        assert reject_of(assoc) == (1, 1, 3)
    assoc = associate(server.port, ctx, calling="CT01")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_called_ae_title_other_than_ours(server: MimicProcess) -> None:
    """An association addressed to another AE title is not for us: RJ 1, 1, 7."""
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    with nothing_stored(server):
        assoc = associate(server.port, ctx, called="NOTMIMIC")
        assert assoc.is_rejected
        assert reject_of(assoc) == (1, 1, 7)


# -- datasets -----------------------------------------------------------------------------


def test_dataset_uid_differs_from_the_request(server: MimicProcess, tmp_path: Path) -> None:
    """The Affected SOP Instance UID names the object we would index; a dataset that says
    otherwise is refused with 0xC001 and an Error Comment, under neither UID stored."""
    requested, inside = generate_uid(), generate_uid()
    path = tmp_path / "mismatch.dcm"
    path.write_bytes(part10(requested, ct_dataset_bytes(inside)))
    meta, _ = split_dataset(path)
    assert meta.MediaStorageSOPInstanceUID == requested  # what pynetdicom will send
    assert pydicom.dcmread(path).SOPInstanceUID == inside

    with nothing_stored(server):
        status, comment = send_file(server, path)
    assert status == 0xC001, hex(status)
    assert comment, "a failure status without an Error Comment"
    assert not indexed(server, requested) and not indexed(server, inside)


@pytest.mark.parametrize("white", [b"\t", b"\n", b"\r", b"\x0b", b"\x1c", b"\xa0"],
                         ids=["tab", "lf", "cr", "vt", "fs", "nbsp"])
def test_a_uid_ended_by_white_space_other_than_padding(
    server: MimicProcess, tmp_path: Path, white: bytes
) -> None:
    """A SOP Instance UID ended by a tab, a line feed... is not a valid UID (PS3.5 9.1:
    digits and dots, a trailing NUL its only padding). It was stored with Success under the
    command's UID: pydicom's ``UID`` strips all white space, while the stored object kept it
    and a dcmtk receiver of it reads another UID. Refused 0xC002, nothing stored."""
    requested = generate_uid()
    dataset = ct_dataset_bytes(requested + "9")
    assert dataset.count((requested + "9").encode()) == 1
    path = tmp_path / "white.dcm"
    path.write_bytes(part10(requested, dataset.replace((requested + "9").encode(),
                                                       requested.encode() + white)))

    with nothing_stored(server):
        status, comment = send_file(server, path)
    assert status == 0xC002, hex(status)
    assert comment == "SOPInstanceUID is not a valid UID"
    assert not indexed(server, requested)


def test_patient_ids_that_differ_past_64_characters(
    server: MimicProcess, tmp_path: Path
) -> None:
    """Two patients whose Patient IDs (LO, at most 64 characters) share their first 64
    were filed as one patient, both studies under the first's name, and a C-FIND for either
    ID as sent matched nothing: the index cut the key to its column. Refused 0xC000,
    nothing stored, and the study is not found by a C-FIND either."""
    sent = []
    for last in "12":
        uid = generate_uid()
        ds = pydicom.dcmread(ct_small())
        ds.SOPInstanceUID, ds.StudyInstanceUID = uid, generate_uid()
        ds.SeriesInstanceUID, ds.PatientID = generate_uid(), "H" * 64 + last
        encoded = encode(ds, False, True)
        assert encoded is not None
        path = tmp_path / f"long-id-{last}.dcm"
        path.write_bytes(part10(uid, encoded))
        with nothing_stored(server):
            sent.append(send_file(server, path))
        assert not indexed(server, uid)
    assert sent == [(0xC000, "PatientID is longer than 64 characters")] * 2


def test_an_instance_contradicting_the_filed_study_or_series(
    server: MimicProcess, tmp_path: Path
) -> None:
    """A series the archive files under another study, or a study it files under another
    Patient ID: refused with 0xC003 and an Error Comment, nothing kept, and the instance
    filed first is still found where it was. Filed under the rows found, the new instance
    would be found under neither its own study nor its own patient."""
    study, series = generate_uid(), generate_uid()

    def send(name: str, *, study: str, series: str, patient_id: str) -> tuple[str, int, str]:
        ds = pydicom.dcmread(ct_small())
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study, series, patient_id
        encoded = encode(ds, False, True)
        assert encoded is not None
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(part10(ds.SOPInstanceUID, encoded))
        return (ds.SOPInstanceUID, *send_file(server, path))

    first, status, _ = send("first", study=study, series=series, patient_id="HIER-1")
    assert status == 0x0000, hex(status)
    for name, study_uid, series_uid, patient_id, says in (
        ("series-in-another-study", generate_uid(), series, "HIER-1", "another study"),
        ("study-of-another-patient", study, generate_uid(), "HIER-2", "another Patient ID"),
    ):
        with nothing_stored(server):
            uid, status, comment = send(name, study=study_uid, series=series_uid,
                                        patient_id=patient_id)
        assert status == 0xC003, (name, hex(status))
        assert says in comment, (name, comment)
        assert not indexed(server, uid)
    assert indexed(server, first)
    rows = server._query(
        "SELECT count(*) FROM series JOIN studies ON studies.id = series.study_fk"
        " WHERE series.series_instance_uid = :series AND studies.study_instance_uid = :study",
        series=series, study=study)
    assert int(rows[0][0]) == 1


#: A sequence of undefined length that never ends: nothing a parser can finish.
UNTERMINATED_SEQUENCE = (
    b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"  # (0008,1115) SQ, undefined length
    + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # an item of undefined length
    + b"\x08\x00\x18\x00UI\x40\x00"  # (0008,0018) announcing 64 bytes that never come
)


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        pytest.param(random.Random(1123).randbytes(4096), None, id="random-bytes"),
        pytest.param(UNTERMINATED_SEQUENCE, 0xC000, id="unterminated-sequence"),
    ],
)
def test_unparseable_dataset(
    server: MimicProcess, tmp_path: Path, dataset: bytes, expected: int | None
) -> None:
    """Bytes that are not a DICOM dataset: a 0xCxxx 'cannot understand' failure with an
    Error Comment (so it is our handler's answer, not pynetdicom's for a crashed handler,
    0xC211 without comment), and nothing kept."""
    uid = generate_uid()
    path = tmp_path / "garbage.dcm"
    path.write_bytes(part10(uid, dataset))
    with nothing_stored(server):
        status, comment = send_file(server, path)
    assert 0xC000 <= status <= 0xCFFF and status != 0xC211, hex(status)
    if expected is not None:
        assert status == expected, hex(status)
    assert comment, "a failure status without an Error Comment"
    assert not indexed(server, uid)


# -- the same with dcmtk ------------------------------------------------------------------


@pytest.mark.dcmtk
@pytest.mark.parametrize("kind", ["foreign-ca", "self-signed", "issued-not-trusted"])
def test_echoscu_with_an_untrusted_certificate(
    server: MimicProcess, tmp_path: Path, kind: str
) -> None:
    """dcmtk, a real modality's stack, cannot even echo with an untrusted certificate."""
    if kind == "foreign-ca":
        _, _, ca, ca_key = write_cert(tmp_path, "foreign-ca", ca=True)
        cert, key, _, _ = write_cert(tmp_path, "client", issuer=(ca, ca_key))
    elif kind == "self-signed":
        cert, key, _, _ = write_cert(tmp_path, "client")
    else:
        cert, key, _, _ = write_cert(tmp_path, "client", issuer=dev_ca(server.certs))
    with nothing_stored(server):
        result = dcmtk(
            "echoscu", "-v", *dcmtk_tls(server, cert, key), "-aet", "MODALITY1",
            "-aec", "MIMIC", "localhost", str(server.port), timeout=30,
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Echo Response (Success)" not in output
    assert "Association Accepted" not in output


@pytest.mark.dcmtk
def test_storescu_without_a_client_certificate(server: MimicProcess) -> None:
    """``+tla``: TLS without a certificate of our own (anonymous); refused before DICOM."""
    with nothing_stored(server):
        result = dcmtk(
            "storescu", "-v", "+tla", "+cf", str(server.ca_cert), "-aet", "MODALITY1",
            "-aec", "MIMIC", "localhost", str(server.port), str(ct_small()), timeout=30,
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Association Accepted" not in output
    assert "Store Response" not in output


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    ("calling", "called", "reason"),
    [
        ("OTHER", "MIMIC", "Calling AE Title Not Recognized"),
        ("CT01", "NOTMIMIC", "Called AE Title Not Recognized"),
    ],
)
def test_storescu_with_wrong_ae_titles(
    server: MimicProcess, ct01: tuple[Path, Path], calling: str, called: str, reason: str
) -> None:
    """storescu with the CT01-bound certificate: rejected with the DICOM reason it can show
    the operator; echoscu as CT01 to MIMIC is the control."""
    cert, key = ct01
    tls = dcmtk_tls(server, cert, key)
    with nothing_stored(server):
        result = dcmtk(
            "storescu", "-v", *tls, "-aet", calling, "-aec", called,
            "localhost", str(server.port), str(ct_small()), timeout=30,
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Association Rejected" in output
    assert "Rejected Permanent, Source: Service User" in output
    assert reason in output
    control = dcmtk(
        "echoscu", "-v", *tls, "-aet", "CT01", "-aec", "MIMIC",
        "localhost", str(server.port), timeout=30,
    )
    assert control.returncode == 0, control.stdout + control.stderr
