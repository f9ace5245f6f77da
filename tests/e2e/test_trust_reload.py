"""Certificates change while the archive runs: add, revoke, rotate (directory source).

The server polls its certificate directory every second here; every step must take effect
within a few refresh periods, without a restart, and without disturbing other clients.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mimic_server.certs import devpki
from tests.data import ct_copy
from tests.support import (
    MimicProcess,
    associate,
    client_context,
    dcmtk,
    dcmtk_tls,
    dev_ca,
    wait_for,
    write_cert,
)


@pytest.fixture
def live(tmp_path: Path):  # type: ignore[no-untyped-def]
    process = MimicProcess(tmp_path / "data", cert_refresh_seconds="1").start()
    yield process
    assert process.stop() == 0, process.log()


def _ctx(server: MimicProcess, name: str):  # type: ignore[no-untyped-def]
    client = server.certs / "clients" / name
    return client_context(client / "client.pem", client / "client.key", server.ca_cert)


def _echo_ok(server: MimicProcess, name: str) -> bool:
    assoc = associate(server.port, _ctx(server, name))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def test_add_and_revoke_without_restart(live: MimicProcess, tmp_path: Path) -> None:
    assert _echo_ok(live, "modality1")
    # An operator issues a second modality's certificate: trusted within a refresh period.
    since = live.log_mark()
    devpki.issue_client(live.certs, "modalityb")
    assert live.wait_until_trusted(lambda: _echo_ok(live, "modalityb"), since, timeout=10)

    # modality1 has an association open while it is revoked: it is aborted...
    syntax = "1.2.840.10008.1.2.1"
    open_assoc = associate(live.port, _ctx(live, "modality1"), transfer_syntaxes=[syntax])
    assert open_assoc.is_established
    assert open_assoc.send_c_store(ct_copy(tmp_path, "1.2.826.0.1.3680043.8.498.50.1")).Status == 0
    since = len(live.log_entries())
    devpki.revoke(live.certs, "modality1")
    assert wait_for(lambda: open_assoc.is_aborted, timeout=10)
    # With several worker processes (MIMIC_WORKERS) the one that aborted has the others look
    # at once: every worker is then on the new set.
    assert wait_for(lambda: _all_processes_revoked(live, since), timeout=10)
    # ...its next association is refused at the TLS handshake...
    assert not associate(live.port, _ctx(live, "modality1")).is_established
    refused = dcmtk("echoscu", *dcmtk_tls(live), "-aec", "MIMIC", "localhost", str(live.port))
    assert refused.returncode != 0
    # ...and modalityb, issued by the same CA, is not affected.
    assert _echo_ok(live, "modalityb")
    assert any(e.get("message") == "trust set updated" for e in live.log_entries())


def _all_processes_revoked(server: MimicProcess, since: int) -> bool:
    entries = server.log_entries()
    processes = next(e for e in entries if e.get("message") == "listening").get("workers", 1)
    updates = [e for e in entries[since:] if e.get("message") == "trust set updated"]
    aborting = next((e for e in updates if e.get("aborted_associations")), None)
    if aborting is None:
        return False
    revoked = {e.get("worker") for e in updates if e.get("trusted") == aborting["trusted"]}
    return len(revoked) == processes


def test_removing_the_trusted_file_revokes(live: MimicProcess) -> None:
    since = live.log_mark()
    devpki.issue_client(live.certs, "modalityc")
    assert live.wait_until_trusted(lambda: _echo_ok(live, "modalityc"), since, timeout=10)
    (live.certs / "trusted" / "modalityc.pem").unlink()
    assert wait_for(lambda: not _echo_ok(live, "modalityc"), timeout=10)
    assert _echo_ok(live, "modality1")


def test_sighup_refreshes_at_once(tmp_path: Path) -> None:
    server = MimicProcess(tmp_path / "data", cert_refresh_seconds="3600").start()
    try:
        devpki.issue_client(server.certs, "modalityd")
        server.hup()
        assert wait_for(lambda: _echo_ok(server, "modalityd"), timeout=10)
    finally:
        assert server.stop() == 0


def test_a_revocation_during_the_drain_aborts_the_revoked_association(tmp_path: Path) -> None:
    """One process (MIMIC_WORKERS=1): a SIGHUP after a certificate is revoked while the
    archive drains aborts that certificate's open association at once (it used to go on
    storing until MIMIC_DRAIN_SECONDS ran out); another peer's association is not
    disturbed, and the drain ends as soon as it is released."""
    server = MimicProcess(tmp_path / "data", workers="1", drain_seconds="120",
                          cert_refresh_seconds="3600").start()
    syntax = "1.2.840.10008.1.2.1"
    try:
        devpki.issue_client(server.certs, "modalityr")
        server.hup()
        assert wait_for(lambda: _echo_ok(server, "modalityr"), timeout=10)
        revoked = associate(server.port, _ctx(server, "modalityr"), transfer_syntaxes=[syntax])
        bystander = associate(server.port, _ctx(server, "modality1"), transfer_syntaxes=[syntax])
        assert revoked.is_established and bystander.is_established
        assert server.proc is not None
        server.proc.send_signal(15)
        assert wait_for(lambda: server.ops("/readyz")[0] == 503)
        uid = "1.2.826.0.1.3680043.8.498.51."
        assert revoked.send_c_store(ct_copy(tmp_path, uid + "1")).Status == 0  # drained

        devpki.revoke(server.certs, "modalityr")
        server.hup()
        # Well within the peer's 15 s network timeout, after which it aborts by itself.
        assert wait_for(lambda: revoked.is_aborted, timeout=6)
        assert bystander.send_c_store(ct_copy(tmp_path, uid + "2")).Status == 0
        bystander.release()
        assert server.proc.wait(30) == 0, server.log()
    finally:
        server.stop()
    updates = [e for e in server.log_entries() if e.get("message") == "trust set updated"]
    assert updates[-1]["aborted_associations"] == 1
    stopped = next(e for e in server.log_entries() if e.get("message") == "stopped")
    assert stopped["aborted_associations"] == 0  # aborted as revoked, not by the drain
    assert server.instance_count() == 2


def test_server_certificate_rotation(live: MimicProcess, tmp_path: Path) -> None:
    syntax = "1.2.840.10008.1.2.1"
    before = associate(live.port, _ctx(live, "modality1"), transfer_syntaxes=[syntax])
    assert before.is_established
    old = hashlib.sha256(before.dul.socket.socket.getpeercert(binary_form=True)).hexdigest()  # type: ignore[union-attr]

    # Rotate: a new server key and certificate from the same CA.
    (live.certs / "server" / "server.pem").unlink()
    (live.certs / "server" / "server.key").unlink()
    devpki.init(live.certs, first_client=False)

    def new_fingerprint() -> str | None:
        assoc = associate(live.port, _ctx(live, "modality1"))
        if not assoc.is_established:
            return None
        der = assoc.dul.socket.socket.getpeercert(binary_form=True)  # type: ignore[union-attr]
        assoc.release()
        return hashlib.sha256(der).hexdigest()

    assert wait_for(lambda: new_fingerprint() not in (None, old), timeout=10)
    # The association opened before the rotation keeps working on its own session.
    assert before.is_established
    assert before.send_c_store(ct_copy(tmp_path, "1.2.826.0.1.3680043.8.498.50.2")).Status == 0
    before.release()


def test_certificate_trusted_once_its_not_before_is_reached(
    live: MimicProcess, tmp_path: Path
) -> None:
    """A client certificate dropped into trusted/ before its notBefore is refused until then,
    and trusted from then on within a refresh period, with no file change and no SIGHUP."""
    not_before = datetime.now(UTC) + timedelta(seconds=4)
    cert, key, _, _ = write_cert(tmp_path / "future", "future", issuer=dev_ca(live.certs),
                                 not_before=not_before)
    shutil.copy(cert, live.certs / "trusted" / "future.pem")
    ctx = client_context(cert, key, live.ca_cert)

    def echo_ok() -> bool:
        assoc = associate(live.port, ctx)
        if not assoc.is_established:
            return False
        ok = assoc.send_c_echo().Status == 0
        assoc.release()
        return ok

    assert not echo_ok()  # not valid yet
    time.sleep(max(0.0, (not_before - datetime.now(UTC)).total_seconds()) + 0.5)
    assert wait_for(echo_ok, timeout=15)
    assert _echo_ok(live, "modality1")
