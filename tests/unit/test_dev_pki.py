"""The development PKI and the ``mimic certs`` commands as an operator meets them: what is
written (and never overwritten), what is trusted with which rule, and the exit code with
its one line when a command is refused."""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import signal
import ssl
import subprocess
import sys
from datetime import datetime, tzinfo
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mimic_server.certs import devpki
from mimic_server.certs.directory import DirectorySource
from mimic_server.cli import main


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki") / "certs"
    devpki.init(directory)
    return directory


@pytest.fixture
def certs(pki: Path, tmp_path: Path) -> Path:
    """A copy of the module's PKI (keys take long to make) for one test to change."""
    return Path(shutil.copytree(pki, tmp_path / "certs"))


def certs_command(*args: str) -> Result:
    return CliRunner().invoke(main, ["certs", *args])


def _rules(directory: Path) -> dict[str, tuple[frozenset[str], object]]:
    return {t.name: (t.ae_titles, t.rule) for t in DirectorySource(directory).load().trusted}


def test_issue_client_never_adopts_a_binding_left_by_a_removed_trust_file(certs: Path) -> None:
    # Section 4: trusted by hand with a wide rule; section 5: its .pem deleted, the .json left.
    (certs / "trusted" / "us-room-1.json").write_text(json.dumps(
        {"ae_titles": ["US01"], "services": ["all"], "move_destinations": ["*"]}))

    result = certs_command("issue-client", "us-room-1", "--cert-dir", str(certs))

    assert result.exit_code == 0, result.output
    assert _rules(certs)["us-room-1"] == (frozenset(), None)  # echo and store, any AE title
    assert not (certs / "trusted" / "us-room-1.json").exists()

    (certs / "trusted" / "ct-2.json").write_text(json.dumps({"services": ["all"]}))
    devpki.issue_client(certs, "ct-2", ["CT02"], rule={"services": ["find"]})
    titles, rule = _rules(certs)["ct-2"]
    assert titles == {"CT02"} and rule is not None
    assert json.loads((certs / "trusted" / "ct-2.json").read_text()) == {
        "ae_titles": ["CT02"], "services": ["find"]}


def _trust_a_ca(certs: Path, name: str) -> None:
    """Section 4: a hospital CA trusted as a whole (here a copy of some CA certificate)."""
    (certs / "trusted-ca").mkdir(exist_ok=True)
    shutil.copy(certs / "ca" / "ca.pem", certs / "trusted-ca" / f"{name}.pem")


def _one_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mimic: "), result.stderr
    return lines[0]


def test_issue_client_refuses_the_name_of_a_trusted_ca(certs: Path) -> None:
    _trust_a_ca(certs, "hospital-devices")

    line = _one_line(certs_command("issue-client", "hospital-devices", "--cert-dir", str(certs)))

    assert "trusted-ca/hospital-devices.pem" in line
    assert not (certs / "clients" / "hospital-devices").exists()
    assert not (certs / "trusted" / "hospital-devices.pem").exists()


def test_revoke_refuses_a_name_in_both_folders_and_moves_nothing(certs: Path) -> None:
    devpki.issue_client(certs, "hospital-devices")
    _trust_a_ca(certs, "hospital-devices")  # copied in by hand after the client was issued

    line = _one_line(certs_command("revoke", "hospital-devices", "--cert-dir", str(certs)))

    assert "trusted/hospital-devices.pem" in line and "trusted-ca/hospital-devices.pem" in line
    assert (certs / "trusted" / "hospital-devices.pem").exists()
    assert (certs / "trusted-ca" / "hospital-devices.pem").exists()
    assert not (certs / "revoked").exists()


class _OneSecond(datetime):
    """Every revocation of the test in the same second."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> _OneSecond:
        return cls(2030, 1, 2, 3, 4, 5, tzinfo=tz)


def test_revoke_never_overwrites_what_revoked_holds(
    certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-trusted and revoked again within one second: every certificate is kept, each with
    its binding, under names the console reads back (``NAME.STAMP.pem``)."""
    issued = []
    for title in ("CT01", "CT02", "CT03"):
        shutil.rmtree(certs / "clients" / "ct", ignore_errors=True)
        issued.append(devpki.issue_client(certs, "ct", [title]).cert.read_bytes())
        with monkeypatch.context() as patch:
            patch.setattr(devpki, "datetime", _OneSecond)
            devpki.revoke(certs, "ct")

    kept = DirectorySource(certs).revoked()

    assert sorted(t.certificate.public_bytes(Encoding.PEM) for t in kept) == sorted(issued)
    assert {t.name for t in kept} == {"ct"}
    assert sorted(sorted(t.ae_titles) for t in kept) == [["CT01"], ["CT02"], ["CT03"]]


def _digest(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


@pytest.mark.parametrize("kept, removed", [
    ("server/server.key", "server/server.pem"),
    ("ca/ca.key", "ca/ca.pem"),
    ("server/server.pem", "server/server.key"),
])
def test_init_never_replaces_a_key_or_certificate_whose_pair_is_missing(
    certs: Path, kept: str, removed: str
) -> None:
    (certs / removed).unlink()
    before = {p: _digest(p) for p in certs.rglob("*") if p.is_file()}

    line = _one_line(certs_command("init", "--cert-dir", str(certs)))

    assert str(certs / kept) in line
    assert {p: _digest(p) for p in certs.rglob("*") if p.is_file()} == before


def test_renewing_the_server_certificate_makes_a_private_key(certs: Path) -> None:
    """Operator guide section 6: delete both files, run init; the key is the owner's alone
    whatever the file it replaced allowed."""
    old = _digest(certs / "server" / "server.key")
    (certs / "server" / "server.pem").unlink()
    (certs / "server" / "server.key").unlink()

    result = certs_command("init", "--cert-dir", str(certs))

    assert result.exit_code == 0, result.output
    assert _digest(certs / "server" / "server.key") != old
    assert (certs / "server" / "server.key").stat().st_mode & 0o777 == 0o600


def test_a_key_is_written_as_a_new_private_file(tmp_path: Path) -> None:
    path = tmp_path / "client.key"
    path.write_text("an older file, readable by all")
    path.chmod(0o644)

    devpki._write_key(path, devpki._key())

    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert [p.name for p in tmp_path.iterdir()] == ["client.key"]


def test_renewing_the_server_certificate_never_brings_back_a_retired_first_client(
    certs: Path,
) -> None:
    """Section 5 retires modality1 (revoke, then its clients/ directory deleted); section 6
    renews the server certificate with init. Only a first start (a new CA) makes modality1,
    with every service."""
    devpki.revoke(certs, devpki.FIRST_CLIENT)
    shutil.rmtree(certs / "clients" / devpki.FIRST_CLIENT)
    (certs / "server" / "server.pem").unlink()
    (certs / "server" / "server.key").unlink()

    result = certs_command("init", "--cert-dir", str(certs), "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["client_name"] is None
    assert json.loads(result.stdout)["created"] is True
    assert devpki.FIRST_CLIENT not in _rules(certs)
    assert not (certs / "clients" / devpki.FIRST_CLIENT).exists()
    assert not list((certs / "trusted").glob(f"{devpki.FIRST_CLIENT}.*"))


def test_a_first_start_cut_short_after_the_ca_makes_its_first_client_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first start wrote the CA and ended (a full disk while writing the client's key,
    a kill): every later start saw a CA and issued no modality1, and the README's dcmtk
    commands failed. A CA that never issued a client still gets it."""
    certs = tmp_path / "certs"

    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(devpki, "issue_client", disk_full)
        assert certs_command("init", "--cert-dir", str(certs)).exit_code == 2
    assert (certs / "ca" / "ca.pem").exists()

    result = certs_command("init", "--cert-dir", str(certs), "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["client_name"] == devpki.FIRST_CLIENT
    assert devpki.FIRST_CLIENT in _rules(certs)


def test_a_first_start_makes_the_first_client_with_every_service(tmp_path: Path) -> None:
    result = certs_command("init", "--cert-dir", str(tmp_path / "certs"), "--json")

    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["client_name"] == devpki.FIRST_CLIENT and Path(made["client_key"]).exists()
    _, rule = _rules(tmp_path / "certs")[devpki.FIRST_CLIENT]
    assert rule is not None and rule.move_destinations is None  # every destination


@pytest.mark.parametrize("days", ["-1", "0", "3651", "100000000"])
def test_days_out_of_range_are_refused_before_anything_is_issued(certs: Path, days: str) -> None:
    result = certs_command("issue-client", "ct", "--days", days, "--cert-dir", str(certs))

    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "--days" in result.stderr and "1<=x<=3650" in result.stderr
    assert not (certs / "clients" / "ct").exists()


def test_a_client_may_not_outlive_the_ca(certs: Path) -> None:
    ca = x509.load_pem_x509_certificate((certs / "ca" / "ca.pem").read_bytes())

    line = _one_line(certs_command("issue-client", "ct", "--days", "3650", "--cert-dir",
                                   str(certs)))

    assert ca.not_valid_after_utc.date().isoformat() in line
    assert not (certs / "clients" / "ct").exists()
    assert certs_command("issue-client", "ct", "--days", "3000", "--cert-dir",
                         str(certs)).exit_code == 0


def test_a_cert_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "certs").write_text("")

    line = _one_line(certs_command("init", "--cert-dir", str(tmp_path / "certs")))

    assert str(tmp_path / "certs") in line


def test_revoke_into_a_revoked_that_is_a_file_is_one_line(certs: Path) -> None:
    (certs / "revoked").write_text("")

    line = _one_line(certs_command("revoke", devpki.FIRST_CLIENT, "--cert-dir", str(certs)))

    assert str(certs / "revoked") in line
    assert (certs / "trusted" / f"{devpki.FIRST_CLIENT}.pem").exists()


@pytest.mark.parametrize("command", [["init"], ["issue-client", "ct"]])
def test_a_missing_ca_key_is_named(certs: Path, command: list[str]) -> None:
    (certs / "ca" / "ca.key").unlink()

    line = _one_line(certs_command(*command, "--cert-dir", str(certs)))

    assert str(certs / "ca" / "ca.key") in line and "run 'mimic certs init'" not in line


@pytest.mark.parametrize("name", ["evil\n", "ct\n01", "ct/01", ".hidden", "x" * 65])
def test_a_name_that_is_not_of_the_file_name_shape_is_refused(certs: Path, name: str) -> None:
    before = sorted(certs.rglob("*"))

    line = _one_line(certs_command("issue-client", name, "--cert-dir", str(certs)))

    assert "is not a usable name" in line
    assert sorted(certs.rglob("*")) == before


@pytest.mark.parametrize("title", [
    "CTé", "\uff23\uff34\uff32\uff2f\uff2f\uff2d\uff11", "CT\\01", "CT\t01", "A" * 17, "   ", "",
])
def test_an_ae_title_outside_the_default_repertoire_is_refused(certs: Path, title: str) -> None:
    line = _one_line(certs_command("issue-client", "ct", "--ae-title", title, "--cert-dir",
                                   str(certs)))

    assert "is not a valid AE title" in line
    assert not (certs / "clients" / "ct").exists()


def test_an_ae_title_keeps_its_inner_spaces_and_loses_the_outer_ones(certs: Path) -> None:
    result = certs_command("issue-client", "ct", "--ae-title", " CT 01 ", "--ae-title",
                           "~!#$%&'()*+,-./:", "--cert-dir", str(certs))

    assert result.exit_code == 0, result.output
    assert _rules(certs)["ct"][0] == {"CT 01", "~!#$%&'()*+,-./:"}


def test_a_binding_file_with_a_title_no_peer_can_send_fails_its_entry(certs: Path) -> None:
    (certs / "trusted" / f"{devpki.FIRST_CLIENT}.json").write_text('{"ae_titles": ["CTé"]}')

    assert devpki.FIRST_CLIENT not in _rules(certs)


def test_a_revoked_entry_whose_binding_no_longer_reads_is_still_listed(certs: Path) -> None:
    """Revoked under an earlier version that let CT\u00e9 through: the console still shows it."""
    (certs / "trusted" / f"{devpki.FIRST_CLIENT}.json").write_text('{"ae_titles": ["CT01"]}')
    devpki.revoke(certs, devpki.FIRST_CLIENT)
    for binding in (certs / "revoked").glob("*.json"):
        binding.write_text('{"ae_titles": ["CT\u00e9"]}')

    kept = DirectorySource(certs).revoked()

    assert [(t.name, t.ae_titles) for t in kept] == [(devpki.FIRST_CLIENT, frozenset())]


def test_a_certificate_cut_short_by_a_full_disk_is_never_taken_as_made(tmp_path: Path) -> None:
    """``certs init`` whose disk fills while it writes the server's chain (a file size
    limit of 2 KiB here: the keys and the CA's certificate fit, the chain does not) fails;
    the next ``init`` then makes a server certificate that loads. The chain used to be
    written in place: 2 KiB of it stayed beside its key, the next ``init`` took the pair
    as made (exit 0), and the server could not load it (PEM bad end line)."""
    certs = tmp_path / "certs"

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, as ENOSPC, not a signal

    full = subprocess.run(
        [sys.executable, "-m", "mimic_server", "certs", "init", "--cert-dir", str(certs)],
        preexec_fn=small_disk, capture_output=True, text=True, timeout=120,
    )
    assert full.returncode != 0, full.stdout
    assert not [p.name for p in (certs / "server").iterdir()]  # no key left alone

    again = certs_command("init", "--cert-dir", str(certs))

    assert again.exit_code == 0, again.output
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "server" / "server.pem", certs / "server" / "server.key")
    assert (certs / "server" / "server.pem").stat().st_mode & 0o777 == 0o644


def test_a_client_whose_certificate_cannot_be_written_may_be_issued_again(
    certs: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def disk_full(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(devpki, "_write_certs", disk_full)
        with pytest.raises(OSError):
            devpki.issue_client(certs, "ct2")
    assert not (certs / "clients" / "ct2").exists()

    issued = devpki.issue_client(certs, "ct2")

    assert issued.cert.exists() and issued.key.exists()


def _ca_ending_in(certs: Path, days: float) -> x509.Certificate:
    """The CA's certificate made again with the same key and name, ending in ``days``
    (negative: ended), as a CA made years ago ends soon."""
    from datetime import UTC, timedelta

    from cryptography.hazmat.primitives import hashes, serialization

    ca_pem, ca_key_pem = certs / "ca" / "ca.pem", certs / "ca" / "ca.key"
    old = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    key = serialization.load_pem_private_key(ca_key_pem.read_bytes(), None)
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.issuer)
               .public_key(old.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=3000))
               .not_valid_after(now + timedelta(days=days)))
    for extension in old.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    ca = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    ca_pem.write_bytes(ca.public_bytes(Encoding.PEM))
    for leaf in ("server.pem", "server.key"):
        (certs / "server" / leaf).unlink()  # renewing the server certificate
    return ca


def test_a_renewed_server_certificate_ends_with_its_ca(certs: Path) -> None:
    """It was 825 days whatever was left of the CA: a server certificate that looked valid
    for two years more while every peer refused its chain once the CA had ended."""
    ca = _ca_ending_in(certs, 30.5)
    devpki.init(certs)
    server = x509.load_pem_x509_certificate((certs / "server" / "server.pem").read_bytes())
    assert server.not_valid_after_utc <= ca.not_valid_after_utc
    assert (ca.not_valid_after_utc - server.not_valid_after_utc).days < 2


def test_a_server_certificate_is_not_issued_by_an_ended_ca(certs: Path) -> None:
    _ca_ending_in(certs, -1)
    with pytest.raises(devpki.ConfigurationError, match="make a new one"):
        devpki.init(certs)
    assert not (certs / "server" / "server.key").exists()
    assert not (certs / "server" / "server.pem").exists()
