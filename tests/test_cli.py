"""The ``mimic`` command as scripts and operators use it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import HOST, MimicProcess, free_port


def mimic(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MIMIC_")}
    clean["MIMIC_OPS_PORT"] = "0"  # no operations listener on the shared default port 8080
    return subprocess.run(
        [sys.executable, "-m", "mimic_server", *args],
        capture_output=True, text=True, timeout=60, env={**clean, **(env or {})},
    )


def test_certs_init_issue_revoke_json(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    init = mimic("certs", "init", "--json", "--data-dir", data)
    assert init.returncode == 0, init.stderr
    made = json.loads(init.stdout)
    for key in ("ca_cert", "client_cert", "client_key"):
        assert Path(made[key]).is_absolute() and Path(made[key]).exists()
    assert oct(Path(made["client_key"]).stat().st_mode & 0o777) == "0o600"

    issued = mimic("certs", "issue-client", "ct01", "--ae-title", "CT01", "--json",
                   "--data-dir", data)
    assert issued.returncode == 0, issued.stderr
    out = json.loads(issued.stdout)
    assert out["ae_titles"] == ["CT01"] and Path(out["client_cert"]).exists()
    assert (tmp_path / "data" / "certs" / "trusted" / "ct01.pem").exists()

    again = mimic("certs", "issue-client", "ct01", "--data-dir", data)
    assert again.returncode == 2 and "already exists" in again.stderr

    revoked = mimic("certs", "revoke", "ct01", "--json", "--data-dir", data)
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["moved_to"]
    assert not (tmp_path / "data" / "certs" / "trusted" / "ct01.pem").exists()
    assert mimic("certs", "revoke", "ct01", "--data-dir", data).returncode == 2


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = mimic("serve", "--host", HOST, "--port", str(port),
                       "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("mimic:")]
    assert len(lines) == 1 and "cannot listen" in lines[0], result.stderr


#: ``mimic serve`` with a spy on the DICOM listener: a line on stderr once it is bound.
_SPIED_SERVE = """
import sys
from mimic_server import app

class Spied(app.MimicAssociationServer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        print("spy: the DICOM listener is bound", file=sys.stderr, flush=True)

app.MimicAssociationServer = Spied
from mimic_server.cli import main
main(["serve", *sys.argv[1:]])
"""


def test_an_ops_port_in_use_stops_the_start_before_the_dicom_port_listens(
    tmp_path: Path,
) -> None:
    """One process (``MIMIC_WORKERS=1``) bound the ops port after the DICOM listener had
    started accepting: a modality could associate (and store) with a server that then
    exited 2. Now the ops port is bound first, as the supervisor of workers does."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MIMIC_")}
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        ops_port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-c", _SPIED_SERVE, "--host", HOST, "--port", str(free_port()),
             "--ops-host", HOST, "--ops-port", str(ops_port),
             "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=60, env={**clean, "MIMIC_WORKERS": "1"},
        )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen for ops HTTP on {HOST}:{ops_port}" in _one_line(result)
    assert "spy: the DICOM listener is bound" not in result.stderr


def test_invalid_setting_is_refused(tmp_path: Path) -> None:
    result = mimic("serve", "--data-dir", str(tmp_path), env={"MIMIC_AE_TITLE": "A" * 17})
    assert result.returncode == 2 and "ae_title" in result.stderr


@pytest.mark.parametrize("title", ["CT\u00e9", "\uff2d\uff29\uff2d\uff29\uff23"])
def test_an_ae_title_no_peer_can_send_is_refused(title: str) -> None:
    """Outside the default repertoire no association can name it: the archive would start
    and refuse every peer's called AE title (A-ASSOCIATE-RJ) with no word of why."""
    from pydantic import ValidationError

    from mimic_server.config import Settings

    with pytest.raises(ValidationError, match="ASCII"):
        Settings(ae_title=title)
    assert Settings(ae_title=" MIMIC ").ae_title == "MIMIC"


@pytest.mark.parametrize(("variable", "value", "said"), [
    # poll() and select() take a C int of milliseconds: past it the certificate watcher's
    # thread died at its first wait (revocations unseen), or every handshake failed while
    # the server said it was ready.
    ("MIMIC_CERT_REFRESH_SECONDS", "10000000", "at most"),
    ("MIMIC_HANDSHAKE_TIMEOUT", "3000000", "at most"),
    ("MIMIC_NETWORK_TIMEOUT", "inf", "finite"),
    ("MIMIC_ACSE_TIMEOUT", "1e300", "at most"),
    ("MIMIC_MAX_PDU_SIZE", "4294967296", "4294967295"),  # 32 bits in the A-ASSOCIATE-AC
    ("MIMIC_LISTEN_BACKLOG", "100000000000000000000", "65535"),
    # SQLAlchemy took the tail of the password for the host, which the driver then named.
    ("MIMIC_DATABASE_URL", "postgresql://postgres:Pa55@TAILSECRET@127.0.0.1/x", "percent"),
    ("MIMIC_DATABASE_URL", "not a url", "cannot be read"),
    ("MIMIC_DATABASE_URL", "mysql://u:TAILSECRET@127.0.0.1/x", "no driver"),
    ("MIMIC_DATABASE_URL", "postgresql://u:TAILSECRET@127.0.0.1:notaport/x", "cannot be read"),
])
def test_a_setting_out_of_bounds_is_refused_with_its_name(
    tmp_path: Path, variable: str, value: str, said: str,
) -> None:
    result = mimic("serve", "--data-dir", str(tmp_path), env={variable: value})
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("mimic:")]
    assert said in line
    assert variable.removeprefix("MIMIC_").lower() in line or "database URL" in line
    assert "Traceback" not in result.stderr and "TAILSECRET" not in result.stderr


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``mimic:`` line a configuration error gives, with no traceback beside it."""
    assert "Traceback" not in result.stderr, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("mimic:")]
    return line


@pytest.mark.parametrize(("command", "workers"), [
    (("serve",), "1"), (("serve",), "2"), (("web",), "1"), (("db", "upgrade"), "1"),
], ids=["serve", "serve-with-workers", "web", "db-upgrade"])
def test_a_data_dir_under_a_file_is_refused_with_its_name(
    tmp_path: Path, command: tuple[str, ...], workers: str,
) -> None:
    """It was a traceback (NotADirectoryError from mkdir) and exit 1, in every mode."""
    (tmp_path / "file").write_text("")
    result = mimic(*command, "--data-dir", str(tmp_path / "file" / "data"), env={
        "MIMIC_WORKERS": workers, "MIMIC_WEB_WORKERS": workers, "MIMIC_WEB_AUTH": "none",
        "MIMIC_PORT": "0", "MIMIC_WEB_PORT": "0", "MIMIC_HOST": HOST,
    })
    assert result.returncode == 2, result.stderr
    line = _one_line(result)
    assert "MIMIC_DATA_DIR" in line and "cannot be created (Not a directory)" in line


@pytest.mark.parametrize("command", [("certs", "init"), ("db", "upgrade")],
                         ids=["certs-init", "db-upgrade"])
def test_a_data_dir_mimic_makes_is_its_owner_s_alone(
    tmp_path: Path, command: tuple[str, ...],
) -> None:
    """Objects, the SQLite index and the audit trail follow the umask (0644 under 022): a
    data directory made 0755 let every local account read every image and patient name.
    One that exists is left as its operator made it."""
    made, existing = tmp_path / "made", tmp_path / "existing"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    old = os.umask(0o022)
    try:
        for data in (made, existing):
            result = mimic(*command, "--data-dir", str(data))
            assert result.returncode == 0, result.stderr
    finally:
        os.umask(old)
    assert made.stat().st_mode & 0o777 == 0o700
    assert existing.stat().st_mode & 0o777 == 0o755
    assert any(made.iterdir())  # the command's files are in it


@pytest.mark.parametrize("command", [("certs", "init"), ("db", "upgrade")],
                         ids=["certs-init", "db-upgrade"])
def test_a_relative_data_dir_mimic_makes_is_its_owner_s_alone(
    tmp_path: Path, command: tuple[str, ...],
) -> None:
    """The default data directory (``mimic-data``) is relative: ``certs init`` compared it
    with the resolved certificate directory, never matched, and devpki's mkdir made it
    0755; ``serve`` then left it so, being there already."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MIMIC_")}
    old = os.umask(0o022)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mimic_server", *command], cwd=tmp_path,
            capture_output=True, text=True, timeout=60, env={**clean, "MIMIC_OPS_PORT": "0"},
        )
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    made = tmp_path / "mimic-data"
    assert made.stat().st_mode & 0o777 == 0o700
    assert any(made.iterdir())  # the command's files are in it


def test_a_data_dir_reconcile_fix_makes_is_its_owner_s_alone(tmp_path: Path) -> None:
    """``mimic reconcile --fix`` on a data directory not made yet writes the SQLite index,
    the audit file and the object directory in it: the directory was made by the store's
    mkdir under the umask (0755, its index and audit trail 0644), not 0700 as serve's."""
    made = tmp_path / "made"
    old = os.umask(0o022)
    try:
        result = mimic("reconcile", "--fix", "--settle-seconds", "0", "--data-dir", str(made))
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert made.stat().st_mode & 0o777 == 0o700
    assert (made / "objects").is_dir()  # the command's files are in it


#: What `mimic serve` and `mimic web` need for a start that gets as far as the OIDC settings.
_OIDC = {"MIMIC_OIDC_ISSUER": "https://issuer.invalid/tenant/v2.0", "MIMIC_OIDC_AUDIENCE": "api",
         "MIMIC_WORKERS": "1", "MIMIC_WEB_WORKERS": "1", "MIMIC_PORT": "0",
         "MIMIC_WEB_PORT": "0", "MIMIC_HOST": HOST}


@pytest.mark.parametrize("command", ["serve", "web"])
@pytest.mark.parametrize(("content", "said"), [
    ("not a certificate\n", "not PEM CA certificates"),
    (None, "is not a file"),  # a directory
], ids=["not-pem", "directory"])
def test_an_oidc_ca_file_that_is_not_pem_is_refused_with_its_name(
    tmp_path: Path, command: str, content: str | None, said: str,
) -> None:
    """A CA file that is not PEM was a traceback (ssl.SSLError) and exit 1; a directory
    was said not to exist."""
    ca_file = tmp_path / "issuer-ca.pem"
    if content is None:
        ca_file.mkdir()
    else:
        ca_file.write_text(content)
    result = mimic(command, "--data-dir", str(tmp_path / "data"),
                   env={**_OIDC, "MIMIC_OIDC_CA_FILE": str(ca_file)})
    assert result.returncode == 2, result.stderr
    line = _one_line(result)
    assert "MIMIC_OIDC_CA_FILE" in line and said in line


def _local_mistakes(root: Path) -> dict[str, tuple[dict[str, str], str]]:
    """One wrong local setting each (the variable: the environment, what the line says)."""
    (root / "file").write_text("")
    (root / "users.toml").write_text("[users\n")
    (root / "not-a-ca.pem").write_text("not a certificate\n")
    syslog = {"MIMIC_AUDIT_SYSLOG_HOST": HOST, "MIMIC_AUDIT_SYSLOG_PORT": str(free_port()),
              "MIMIC_AUDIT_SYSLOG_CA_FILE": str(root / "not-a-ca.pem")}
    return {
        "MIMIC_USERS_FILE": ({"MIMIC_USERS_FILE": str(root / "users.toml")}, "not valid TOML"),
        "MIMIC_OIDC_ISSUER": ({**_OIDC, "MIMIC_OIDC_ISSUER": "http://issuer.example/v2.0"},
                              "https:// URL"),
        "MIMIC_SPOOL_DIR": ({"MIMIC_SPOOL_DIR": str(root / "file" / "spool")},
                            "cannot be created (Not a directory)"),
        "MIMIC_AUDIT_SYSLOG_CA_FILE": (syslog, "not PEM CA certificates"),
    }


@pytest.mark.parametrize(("command", "variable"), [
    ("serve", "MIMIC_USERS_FILE"), ("serve", "MIMIC_OIDC_ISSUER"), ("web", "MIMIC_OIDC_ISSUER"),
    ("serve", "MIMIC_SPOOL_DIR"), ("web", "MIMIC_SPOOL_DIR"),
    ("serve", "MIMIC_AUDIT_SYSLOG_CA_FILE"), ("web", "MIMIC_AUDIT_SYSLOG_CA_FILE"),
])
def test_a_local_setting_is_checked_at_start_not_at_first_use(
    tmp_path: Path, command: str, variable: str,
) -> None:
    """Each was first read when used: the user file at the first username and passcode, the
    issuer at the first token, the spool at the first large object, the audit repository's
    CAs at its first message (taken beside the server's own CAs, the file was ignored and
    every message then failed the repository's check): the server started and said it was
    ready. The audit repository is not listening here: only the file is checked at start."""
    env, said = _local_mistakes(tmp_path)[variable]
    result = mimic(command, "--data-dir", str(tmp_path / "data"), env={
        "MIMIC_WORKERS": "1", "MIMIC_WEB_WORKERS": "1", "MIMIC_WEB_AUTH": "none",
        "MIMIC_PORT": "0", "MIMIC_WEB_PORT": "0", "MIMIC_HOST": HOST,
        **env,
    })
    assert result.returncode == 2, result.stderr
    line = _one_line(result)
    assert variable in line and said in line


def test_an_empty_database_url_is_the_embedded_index(tmp_path: Path) -> None:
    """An env file's ``MIMIC_DATABASE_URL=``: unset, as it always was (today's check of the
    URL refused it)."""
    from mimic_server.config import Settings

    assert Settings(data_dir=tmp_path, database_url="").index_url.startswith("sqlite:///")


def test_unreadable_server_key_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert mimic("certs", "init", "--data-dir", str(data)).returncode == 0
    (data / "certs" / "server" / "server.key").write_text("not a key")
    result = mimic("serve", "--host", HOST, "--port", str(free_port()), "--data-dir", str(data))
    assert result.returncode == 2 and "server certificate or key unusable" in result.stderr


def test_sigterm_is_a_clean_stop(tmp_path: Path) -> None:
    server = MimicProcess(tmp_path / "data").start()
    assert server.stop() == 0
    assert any(e.get("message") == "stopped" for e in server.log_entries())


def test_every_setting_has_a_flag() -> None:
    from mimic_server.config import Settings

    help_text = mimic("serve", "--help").stdout
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in help_text
        assert f"MIMIC_{name.upper()}" in help_text.replace("\n", "").replace(" ", "")


def test_sigterm_drains_an_open_association(tmp_path: Path) -> None:
    from tests.data import ct_small
    from tests.support import associate, client_context

    server = MimicProcess(tmp_path / "data", drain_seconds="20").start()
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    assoc = associate(server.port, ctx, transfer_syntaxes=["1.2.840.10008.1.2.1"])
    assert assoc.is_established
    assert server.proc is not None
    server.proc.send_signal(15)
    # The listener closes, but the open association may finish its work.
    from tests.support import wait_for

    def listener_closed() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex((HOST, server.port)) != 0

    assert wait_for(listener_closed, timeout=10)
    assert assoc.send_c_store(ct_small()).Status == 0
    assoc.release()
    assert server.stop() == 0
    assert server.instance_count() == 1


def test_settings_file_with_move_destinations(tmp_path: Path) -> None:
    """A TOML settings file; MIMIC_* variables override it, flags override both."""
    from mimic_server.config import Settings

    path = tmp_path / "mimic.toml"
    path.write_text(
        'ae_title = "ARCHIVE1"\n'
        "port = 11200\n"
        "[move_destinations.WORKSTATION]\n"
        'host = "10.1.2.3"\n'
        "port = 104\n"
        "tls = true\n"
        'server_name = "ws.example"\n'
    )
    settings = Settings(config_file=path)
    assert settings.ae_title == "ARCHIVE1" and settings.port == 11200
    destination = settings.move_destinations["WORKSTATION"]
    assert (destination.host, destination.port, destination.tls) == ("10.1.2.3", 104, True)
    assert Settings(config_file=path, port=11300).port == 11300

    missing = mimic("serve", "--config-file", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    env_wins = subprocess.run(
        [sys.executable, "-c", "from mimic_server.config import Settings; print(Settings().port)"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "MIMIC_CONFIG_FILE": str(path), "MIMIC_PORT": "11400"},
    )
    assert env_wins.stdout.strip() == "11400", env_wins.stderr


def test_move_destination_settings_are_checked_at_start(tmp_path: Path) -> None:
    missing_ca = json.dumps({"PACS": {"host": HOST, "port": 104, "ca_file": "/nonexistent.pem"}})
    result = mimic("serve", "--data-dir", str(tmp_path / "a"), "--move-destinations", missing_ca)
    assert result.returncode == 2 and "does not exist" in result.stderr
    # Not PEM: it was taken silently beside the server's CAs, and every C-MOVE to the
    # destination failed its handshake.
    der = tmp_path / "pacs-ca.der"
    der.write_bytes(b"0\x82\x01\x0a not a PEM file")
    not_pem = json.dumps({"PACS": {"host": HOST, "port": 104, "ca_file": str(der)}})
    result = mimic("serve", "--data-dir", str(tmp_path / "c"), "--move-destinations", not_pem)
    assert result.returncode == 2 and "holds no PEM certificate" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    tls_without_tls = json.dumps({"PACS": {"host": HOST, "port": 104}})
    result = mimic("serve", "--data-dir", str(tmp_path / "b"), "--port", str(free_port()),
                   "--host", HOST, "--no-tls", "--move-destinations", tls_without_tls)
    assert result.returncode == 2 and "TLS" in result.stderr


def test_a_trail_that_may_be_read_and_not_written_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An auditor's account, a read-only mount or a copy: the reading cannot be recorded,
    which is said on stderr, and the records are listed all the same (it was a traceback
    and exit 1, nothing listed)."""
    from click.testing import CliRunner

    from mimic_server import cli, resources
    from mimic_server.security import audit
    from mimic_server.security.audit import AuditLog

    data = tmp_path / "data"
    trail = AuditLog(data / "audit.jsonl")
    trail.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="started")
    trail.close()

    def read_only(*_args: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(resources, "open_audit_trail", read_only)
    result = CliRunner().invoke(cli.main, ["audit", "--json", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["event"] for line in result.stdout.splitlines()] == ["110100"]
    assert "could not be recorded (OSError: Read-only file system)" in result.stderr


def test_reading_the_audit_trail_is_audited(tmp_path: Path) -> None:
    """``mimic audit`` writes an Audit Log Used record (PS3.15 A.5.3.2) into the trail it
    read, naming the account and the selection; it is listed by the next reading."""
    from mimic_server.security import audit
    from mimic_server.security.audit import AuditLog
    from mimic_server.security.audit_message import validate

    data = tmp_path / "data"
    trail = AuditLog(data / "audit.jsonl")
    trail.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="started")
    trail.close()
    first = mimic("audit", "--json", "--event", "110100", "--data-dir", str(data))
    assert first.returncode == 0, first.stderr
    assert [json.loads(line)["event"] for line in first.stdout.splitlines()] == ["110100"]
    listed = mimic("audit", "--json", "--event", "110101", "--data-dir", str(data))
    used = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["event_name"] for r in used] == ["Audit Log Used"]
    assert used[0]["identity"] == "mimic audit" and used[0]["user"] and used[0]["outcome"] == 0
    validate(used[0]["xml"])
    assert "filter: event=110100" in used[0]["xml"] and 'EventActionCode="R"' in used[0]["xml"]
    assert (data / "audit.jsonl").as_uri() in used[0]["xml"]


def _repository_of_the_dev_pki(tmp_path: Path) -> tuple[Path, Any, dict[str, str]]:
    """A data directory with the development PKI, an audit repository that accepts its server
    certificate as a client's, and the settings that name the repository with no client
    certificate of its own: the documented default, the archive's own certificate."""
    from tests.syslog_double import SyslogTlsReceiver

    data = tmp_path / "data"
    init = mimic("certs", "init", "--data-dir", str(data))
    assert init.returncode == 0, init.stderr
    receiver = SyslogTlsReceiver(tmp_path / "repository",
                                 client_cas=(data / "certs" / "ca" / "ca.pem",)).start()
    env = {"MIMIC_AUDIT_SYSLOG_HOST": HOST, "MIMIC_AUDIT_SYSLOG_PORT": str(receiver.port),
           "MIMIC_AUDIT_SYSLOG_CA_FILE": str(receiver.ca[0]),
           "MIMIC_AUDIT_SYSLOG_SERVER_NAME": "localhost"}
    return data, receiver, env


def test_audit_with_a_repository_shows_it_the_archive_s_own_certificate(tmp_path: Path) -> None:
    """``mimic audit`` with an audit repository and no client certificate setting (the
    archive's own is the default) ended in a traceback, "needs a client certificate ... TLS
    is off", listing nothing and recording nothing: it now lists, and its Audit Log Used
    goes to the repository over TLS with the archive's server certificate."""
    from mimic_server.security import audit
    from mimic_server.security.audit import AuditLog
    from tests.support import wait_for

    data, receiver, env = _repository_of_the_dev_pki(tmp_path)
    try:
        trail = AuditLog(data / "audit.jsonl")
        trail.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="started")
        trail.close()
        result = mimic("audit", "--json", "--event", "110100", "--data-dir", str(data), env=env)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert [json.loads(line)["event"] for line in result.stdout.splitlines()] == ["110100"]
        assert wait_for(lambda: any(b"Audit Log Used" in m for m in receiver.messages))
        assert receiver.peers == ["MIMIC server"]
    finally:
        receiver.stop()


def test_mimic_audit_lists_when_the_repository_s_certificate_cannot_be_read(
    tmp_path: Path,
) -> None:
    """An auditor's account that cannot read the archive's key (shown to the repository) still
    gets the listing, and is told its reading could not be recorded: not a traceback."""
    from mimic_server.security import audit
    from mimic_server.security.audit import AuditLog

    data = tmp_path / "data"
    trail = AuditLog(data / "audit.jsonl")
    trail.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="started")
    trail.close()
    result = mimic("audit", "--json", "--data-dir", str(data), env={
        "MIMIC_AUDIT_SYSLOG_HOST": HOST, "MIMIC_AUDIT_SYSLOG_PORT": str(free_port()),
        "MIMIC_CERT_DIR": str(tmp_path / "no-certs")})
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["event"] for line in result.stdout.splitlines()] == ["110100"]
    assert "could not be recorded (ConfigurationError: cannot read the server certificate" \
        in result.stderr


def test_mimic_web_starts_with_a_repository_and_the_archive_s_own_certificate(
    tmp_path: Path,
) -> None:
    """``mimic web`` refused to start (exit 2, "TLS is off, there is no server certificate")
    when the audit repository used the default client certificate, the archive's own; its
    records now reach the repository with that certificate."""
    import urllib.request

    from tests.support import wait_for
    from tests.web_support import WebProcess

    data, receiver, env = _repository_of_the_dev_pki(tmp_path)
    web = WebProcess(data, None, policy=None, web_auth="none",
                     **{k.removeprefix("MIMIC_").lower(): v for k, v in env.items()})
    try:
        web.start()
        with urllib.request.urlopen(f"{web.url}/studies", timeout=30) as response:
            assert response.status in (200, 204)
        assert wait_for(lambda: any(b"110112" in m for m in receiver.messages), timeout=15)
        assert receiver.peers == ["MIMIC server"]
    finally:
        assert web.stop() == 0, web.log()
        receiver.stop()


def test_mimic_audit_skips_undecodable_lines(tmp_path: Path) -> None:
    """A line of bytes that are not UTF-8, or of JSON that is no object (what a crash may
    leave in the file), is skipped like a line cut short: the file read as text raised
    UnicodeDecodeError (and ``null`` a TypeError), and nothing of the trail was listed."""
    from mimic_server.security import audit
    from mimic_server.security.audit import AuditLog

    data = tmp_path / "data"
    trail = AuditLog(data / "audit.jsonl")
    trail.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="started")
    trail.close()
    with open(data / "audit.jsonl", "ab") as fh:
        fh.write(b"\xff\xfe\x00 garbage\nnull\n5\n")
    trail = AuditLog(data / "audit.jsonl")
    trail.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="stopped")
    trail.close()
    result = mimic("audit", "--json", "--event", "110100", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["event_type"] for line in result.stdout.splitlines()] == [
        "application-start", "application-stop"]


def test_mimic_audit_with_a_trail_it_cannot_read_exits_2(tmp_path: Path) -> None:
    """Documented: a trail that cannot be read exits 2 with one line; it was a traceback."""
    data = tmp_path / "data"
    (data / "audit.jsonl").mkdir(parents=True)
    result = mimic("audit", "--data-dir", str(data))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    line = _one_line(result)
    assert "audit.jsonl unreadable: Is a directory" in line


def test_mimic_audit_refuses_json_and_xml_together(tmp_path: Path) -> None:
    """Documented as ``[--json | --xml]`` and 'exit 2 on a bad option': given both, the
    last one won silently (exit 0), so a script parsing JSON got XML."""
    data = tmp_path / "data"
    result = mimic("audit", "--json", "--xml", "--data-dir", str(data))
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert _one_line(result) == "mimic: --json and --xml exclude each other: give one"


def test_mimic_web_with_a_url_that_cannot_work_refuses_to_start(tmp_path: Path) -> None:
    """``MIMIC_WEB_BASE_URL=pacs.example.org`` (no scheme) made every bulk data URI of a
    metadata answer relative to the viewer's page; now one line at start, exit 2."""
    result = mimic("web", "--data-dir", str(tmp_path / "data"),
                   env={"MIMIC_WEB_BASE_URL": "pacs.example.org"})
    assert result.returncode == 2, result.stderr
    line = _one_line(result)
    assert "web_base_url" in line and "absolute URL" in line


def _trail_of_every_event(data: Path) -> None:
    """One record of each event MIMIC records, and one of each event type."""
    from mimic_server.security import audit
    from mimic_server.security.audit import AuditLog
    from mimic_server.security.audit_records import EVENT_TYPES

    trail = AuditLog(data / "audit.jsonl")
    for event in audit.EVENTS:
        trail.record(event, audit.SUCCESS, identity="ct01")
    for name in EVENT_TYPES:
        trail.record(audit.SECURITY_ALERT, audit.MINOR_FAILURE, event_type=name,
                     identity="ct01")
    trail.close()
    assert trail.failures == 0


def test_mimic_audit_refuses_an_event_it_does_not_know(tmp_path: Path) -> None:
    """A mistyped ``--event`` selected nothing and exited 0: the operator read an empty
    listing as an empty trail. It is now exit 2 and one line naming the accepted values;
    nothing is listed, and nothing is added to the trail (no Audit Log Used either)."""
    data = tmp_path / "data"
    _trail_of_every_event(data)
    before = (data / "audit.jsonl").read_bytes()
    for wrong in ("Nonsense", "Qurey", "110199", "log-in"):
        result = mimic("audit", "--event", wrong, "--data-dir", str(data))
        assert result.returncode == 2, result.stdout
        assert result.stdout == ""
        line = _one_line(result)
        assert line.startswith(f"mimic: --event {wrong!r} is no event MIMIC records")
        assert "110112 Query" in line and "110114 User Authentication" in line
        assert "login" in line and "application-stop" in line
    assert (data / "audit.jsonl").read_bytes() == before


def test_mimic_audit_takes_every_event_the_trail_records_in_any_case(tmp_path: Path) -> None:
    """Each code, meaning and event type the trail holds selects its records, whatever its
    case (``query`` selected nothing, as ``Query`` was matched exactly)."""
    from click.testing import CliRunner

    from mimic_server import cli
    from mimic_server.security import audit
    from mimic_server.security.audit_records import EVENT_TYPES

    data = tmp_path / "data"
    _trail_of_every_event(data)

    def listed(event: str) -> list[dict[str, Any]]:
        result = CliRunner().invoke(
            cli.main, ["audit", "--json", "--event", event, "--data-dir", str(data)])
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.stdout.splitlines()]

    for code, _scheme, meaning in audit.EVENTS:
        for spelling in (code, meaning, meaning.lower(), meaning.upper(), f" {meaning} "):
            records = listed(spelling)
            assert records, spelling
            assert {(r["event"], r["event_name"]) for r in records} == {(code, meaning)}
    for name in EVENT_TYPES:
        for spelling in (name, name.upper()):
            records = listed(spelling)
            assert records, spelling
            assert {r["event_type"] for r in records} == {name}


@pytest.mark.parametrize("made", [False, True], ids=["no-data-dir", "empty-data-dir"])
def test_mimic_audit_without_a_trail_says_so(tmp_path: Path, made: bool) -> None:
    """Every archive's start is an audit record, so a data directory without the trail is
    none an archive ran in (a mistyped MIMIC_DATA_DIR): that listed nothing, exit 0, and the
    operator read it as an empty trail. Now exit 2 and one line naming the file; nothing
    is created."""
    data = tmp_path / "data"
    if made:
        data.mkdir()
    result = mimic("audit", "--data-dir", str(data))
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert _one_line(result) == (
        f"mimic: audit trail {data / 'audit.jsonl'} does not exist: no archive has run with "
        f"this MIMIC_DATA_DIR ({data}) yet, or it names the wrong directory")
    assert sorted(tmp_path.rglob("*")) == ([data] if made else [])


@pytest.mark.parametrize("age", ["99999999999d", "1000000d"])
def test_mimic_audit_refuses_an_age_too_old_for_a_date(tmp_path: Path, age: str) -> None:
    """An age that reaches back before year 1 (a digit too many) was an OverflowError
    traceback, exit 1: it is a bad option, exit 2 and one line."""
    data = tmp_path / "data"
    _trail_of_every_event(data)
    result = mimic("audit", "--since", age, "--data-dir", str(data))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert _one_line(result) == (
        f"mimic: --since {age!r} reaches back past the first date a time can have")
