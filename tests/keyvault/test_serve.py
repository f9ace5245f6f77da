"""A real ``mimic serve`` on Key Vault: operators onboard, revoke and rotate in the vault.

The server reads the Key Vault double over HTTPS with a token from the loopback managed
identity endpoint, exactly as in Container Apps (``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``,
``REQUESTS_CA_BUNDLE`` for the vault's TLS). It polls every second; every step must take
effect within a few periods, without a restart, and survive a vault outage.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.data import ct_copy
from tests.identity_double import IdentityDouble
from tests.keyvault.conftest import Pki, pem
from tests.keyvault_double import KeyVaultDouble
from tests.support import (
    HOST,
    MimicProcess,
    associate,
    client_context,
    dcmtk,
    free_port,
    wait_for,
)

SYNTAX = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian, what ct_small is in
CLIENT = {"mimic-trust": "client"}


@dataclass
class Modality:
    name: str
    ae_title: str
    cert: Path
    key: Path
    ca: Path

    def context(self) -> ssl.SSLContext:
        return client_context(self.cert, self.key, self.ca)

    def dcmtk_args(self, port: int) -> list[str]:
        return ["+tls", str(self.key), str(self.cert), "+cf", str(self.ca),
                "-aet", self.ae_title, "-aec", "MIMIC", HOST, str(port)]


def _modality(pki: Pki, vault: KeyVaultDouble, name: str, ae_title: str) -> Modality:
    cert_path, key_path, cert, _ = pki.issue(name)
    vault.set_secret(name, pem(cert), tags={**CLIENT, "mimic-ae-titles": ae_title})
    return Modality(name, ae_title, cert_path, key_path, pki.ca_path)


def _onboard_later(pki: Pki, name: str, ae_title: str) -> tuple[Modality, str]:
    cert_path, key_path, cert, _ = pki.issue(name)
    return Modality(name, ae_title, cert_path, key_path, pki.ca_path), pem(cert)


def _echo_ok(server: MimicProcess, who: Modality) -> bool:
    assoc = associate(server.port, who.context(), calling=who.ae_title)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def _server_fingerprint(server: MimicProcess, who: Modality) -> str | None:
    assoc = associate(server.port, who.context(), calling=who.ae_title)
    if not assoc.is_established:
        return None
    der = assoc.dul.socket.socket.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assoc.release()
    return hashlib.sha256(der).hexdigest()


def _ct(tmp_path: Path, n: int) -> Path:
    return ct_copy(tmp_path, f"1.2.826.0.1.3680043.8.498.51.{n}")


def _env(vault: KeyVaultDouble, identity: IdentityDouble) -> dict[str, str]:
    return {**identity.env(), "REQUESTS_CA_BUNDLE": str(vault.ca_bundle)}


@pytest.fixture
def live(
    tmp_path: Path, vault: KeyVaultDouble, identity: IdentityDouble, pki: Pki
) -> Iterator[MimicProcess]:
    _, _, cert, key = pki.issue("server", server=True)
    vault.import_certificate("mimic-server", cert, key, chain=[pki.ca])
    process = MimicProcess(
        tmp_path / "data",
        env=_env(vault, identity),
        keyvault_url=vault.url,
        keyvault_server_cert="mimic-server",
        keyvault_verify_challenge_resource="false",
        cert_refresh_seconds="1",
    ).start()
    yield process
    assert process.stop() == 0, process.log()


def test_operators_work_in_the_vault_and_the_server_follows(
    live: MimicProcess, vault: KeyVaultDouble, identity: IdentityDouble, pki: Pki,
    tmp_path: Path,
) -> None:
    assert not (live.data_dir / "certs").exists()  # no development PKI in Key Vault mode
    assert "https://vault.azure.net" in identity.resources  # the server used managed identity
    since = live.log_mark()
    a = _modality(pki, vault, "modality-a", "MODALITYA")
    b, b_pem = _onboard_later(pki, "modality-b", "MODALITYB")

    # Client A (bound to AE MODALITYA by tag) stores, with pynetdicom and with dcmtk.
    assert live.wait_until_trusted(lambda: _echo_ok(live, a), since, timeout=10)
    a_open = associate(live.port, a.context(), calling=a.ae_title, transfer_syntaxes=[SYNTAX])
    assert a_open.is_established
    assert a_open.send_c_store(_ct(tmp_path, 1)).Status == 0
    sent = dcmtk("storescu", *a.dcmtk_args(live.port), str(_ct(tmp_path, 2)))
    assert sent.returncode == 0, sent.stderr
    assert live.instance_count() == 2
    assert not _echo_ok(live, b)  # B is not in the vault yet

    # The operator pastes B's certificate into a secret tagged mimic-trust=client.
    since = live.log_mark()
    vault.set_secret(b.name, b_pem, tags={**CLIENT, "mimic-ae-titles": b.ae_title})
    assert live.wait_until_trusted(lambda: _echo_ok(live, b), since, timeout=10)

    # The operator disables A: its open association is aborted, its next ones refused. The
    # worker that found the change first aborts at once; the others read the vault again on
    # its relay (the supervisor's SIGHUP), moments later: then every worker refuses A.
    vault.update("secrets", a.name, enabled=False)
    assert wait_for(lambda: a_open.is_aborted, timeout=10)
    assert wait_for(lambda: not any(_echo_ok(live, a) for _ in range(4)), timeout=10)
    assert not any(_echo_ok(live, a) for _ in range(4))
    assert dcmtk("echoscu", *a.dcmtk_args(live.port)).returncode != 0
    assert _echo_ok(live, b)

    # The operator rotates the server certificate (a new version of the same name).
    before = associate(live.port, b.context(), calling=b.ae_title, transfer_syntaxes=[SYNTAX])
    assert before.is_established
    old = _server_fingerprint(live, b)
    _, _, new_cert, new_key = pki.issue("server-2", server=True)
    vault.import_certificate("mimic-server", new_cert, new_key, chain=[pki.ca])
    assert wait_for(lambda: _server_fingerprint(live, b) not in (None, old), timeout=10)
    assert before.is_established  # opened before the rotation: keeps its session
    assert before.send_c_store(_ct(tmp_path, 3)).Status == 0
    before.release()

    # The vault goes down: everything keeps working on the last good set.
    c, c_pem = _onboard_later(pki, "modality-c", "MODALITYC")
    vault.down = True
    vault.set_secret(c.name, c_pem, tags=CLIENT)
    assert wait_for(lambda: _refresh_failures(live) >= 2, timeout=15)
    assert _echo_ok(live, b)
    stored = dcmtk("storescu", *b.dcmtk_args(live.port), str(_ct(tmp_path, 4)))
    assert stored.returncode == 0, stored.stderr
    assert not _echo_ok(live, a) and not _echo_ok(live, c)

    # The vault comes back: changes flow again.
    vault.down = False
    assert wait_for(lambda: _echo_ok(live, c), timeout=15)
    assert live.instance_count() == 4
    messages = [e.get("message") for e in live.log_entries()]
    assert "trust set updated" in messages and "server certificate loaded" in messages


def _refresh_failures(server: MimicProcess) -> int:
    return sum(
        1 for e in server.log_entries()
        if e.get("message") == "certificate refresh failed; the last good trust set stays in force"
    )


def test_unreachable_vault_fails_fast_with_exit_code_2(
    tmp_path: Path, vault: KeyVaultDouble, identity: IdentityDouble
) -> None:
    url = f"https://{HOST}:{free_port()}"
    process = MimicProcess(
        tmp_path / "data", env=_env(vault, identity), keyvault_url=url,
        keyvault_verify_challenge_resource="false",
    )
    with pytest.raises(RuntimeError, match="exited 2"):
        process.start(timeout=60)
    assert f"Key Vault {url}" in process.log()
    process.stop()
