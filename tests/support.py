"""Test support: a real ``mimic serve`` process, certificates, DICOM peers (pynetdicom, dcmtk).

Every network address here is loopback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext
from sqlalchemy import create_engine, text

HOST = "127.0.0.1"


def _ephemeral_ports() -> tuple[int, int]:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = (int(part) for part in text.split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


_EPHEMERAL = _ephemeral_ports()
_handed_out: set[int] = set()
_ports = random.Random()  # seeded from the OS: the two test processes choose apart


def free_port() -> int:
    """A loopback port nothing is bound to, for a server started next, chosen *outside* the
    kernel's ephemeral range: a port the kernel hands out (a bind to port 0) can be taken
    again as the local port of any outgoing connection before the server binds it, and the
    suite opens thousands of them beside its servers ("Address already in use" at start)."""
    low, high = _EPHEMERAL
    first, last = (10000, low - 1) if low > 11000 else (high + 1, 65535)
    for _ in range(200):
        port = _ports.randint(first, last)
        if port in _handed_out:
            continue  # given to a server of this process that may not have bound it yet
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port outside the ephemeral range")


class MimicProcess:
    """``python -m mimic_server serve`` on a loopback port with its own data directory."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        env: dict[str, str] | None = None,
        fd_limit: tuple[int, int] | None = None,
        **settings: str,
    ) -> None:
        """``settings`` become ``MIMIC_*`` variables; ``env`` adds others (Azure, TLS trust);
        ``fd_limit`` is the (soft, hard) RLIMIT_NOFILE the process starts with."""
        self.data_dir = data_dir
        self.port = port or free_port()
        #: The operations HTTP port (/healthz, /readyz, /metrics); settings may say "0" (off).
        self.ops_port = int(settings.pop("ops_port", None) or free_port())
        self.settings = settings
        self.extra_env = env or {}
        self.fd_limit = fd_limit
        self.log_path = data_dir.parent / f"{data_dir.name}-serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def certs(self) -> Path:
        return self.data_dir / "certs"

    def start(self, timeout: float = 90.0) -> MimicProcess:
        """Start and wait for "listening": with several workers (MIMIC_WORKERS, default the
        CPUs) that is a supervisor and its workers, each importing everything."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIMIC_")}
        env.update(self.extra_env)
        env.update({f"MIMIC_{k.upper()}": str(v) for k, v in self.settings.items()})
        env.update(
            MIMIC_HOST=HOST,
            MIMIC_PORT=str(self.port),
            MIMIC_OPS_HOST=HOST,
            MIMIC_OPS_PORT=str(self.ops_port),
            MIMIC_DATA_DIR=str(self.data_dir),
            MIMIC_LOG_FORMAT="json",
        )
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mimic_server", "serve"],
            env=env, stdout=self._log, stderr=self._log, cwd=self.data_dir.parent,
            preexec_fn=self._limit_fds if self.fd_limit else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mimic serve exited {self.proc.returncode}:\n{self.log()}")
            if any(e.get("message") == "listening" for e in self.log_entries()):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"mimic serve did not start:\n{self.log()}")

    def _limit_fds(self) -> None:
        import resource

        assert self.fd_limit is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.fd_limit)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        code = terminate(self.proc, timeout)
        self._log.close()
        return code

    def ops(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """GET ``path`` on the operations port: (HTTP status, body)."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.ops_port}{path}",
                                        timeout=timeout) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read()

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_entries(self) -> list[dict]:
        entries = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
        return entries

    def worker_count(self) -> int:
        """How many worker processes serve (the ``listening`` line says; 1 without any)."""
        for entry in self.log_entries():
            if entry.get("message") == "listening":
                return int(entry.get("workers", 1))
        raise AssertionError("the server has not said it is listening")

    def log_mark(self) -> int:
        """How many log lines there are now: a ``since`` for :meth:`wait_until_trusted`."""
        return len(self.log_entries())

    def trust_agreed(self, since: int) -> bool:
        """Every worker has logged a trusted set since line ``since``, and the latest of each
        is the same size.

        A certificate placed in the trusted set is found by one worker's watcher first and by
        the others moments later, on the supervisor's relay. An echo that succeeded reached
        one worker; the next association may reach another (whichever accepts it first on
        the shared listening socket), so a test that goes on with the new certificate waits
        for this as well. A worker applies a set before it logs it, hence a line of each
        since the change, not just equal sizes; sizes suffice where the set only grows.
        """
        latest: dict[object, object] = {}
        for entry in self.log_entries()[since:]:
            if entry.get("message") == "trust set updated":
                latest[entry.get("worker")] = entry.get("trusted")
        return len(latest) == self.worker_count() and len(set(latest.values())) == 1

    def wait_until_trusted(
        self, probe: Callable[[], bool], since: int, timeout: float = 15.0
    ) -> bool:
        """``probe`` (an echo with the certificate placed after log line ``since``) succeeds,
        and every worker has read the set it is in."""
        return wait_for(probe, timeout) and wait_for(lambda: self.trust_agreed(since), timeout)

    # -- what the archive holds ------------------------------------------------------------

    @property
    def database_url(self) -> str:
        return self.settings.get("database_url") or f"sqlite:///{self.data_dir / 'index.sqlite3'}"

    def _query(self, sql: str, **params: object) -> list[tuple]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(sql), params)]
        finally:
            engine.dispose()

    def instance_count(self) -> int:
        return int(self._query("SELECT count(*) FROM instances")[0][0])

    def stored_objects(self) -> list[Path]:
        """Object files; not the store's empty spare temporary files in ``.incoming``."""
        root = self.data_dir / "objects"
        incoming = root / ".incoming"
        return sorted(
            p for p in root.rglob("*") if p.is_file() and incoming not in p.parents
        )

    def incoming_leftovers(self) -> list[Path]:
        """Files with content under ``.incoming`` (each store's own folder and lock file
        there are expected; its spare temporary files are empty)."""
        incoming = self.data_dir / "objects" / ".incoming"
        if not incoming.exists():
            return []
        return sorted(p for p in incoming.rglob("*") if p.is_file() and p.stat().st_size)

    def object_for(self, sop_instance_uid: str) -> Path:
        rows = self._query(
            "SELECT object_key FROM instances WHERE sop_instance_uid = :uid", uid=sop_instance_uid
        )
        assert rows, f"{sop_instance_uid} is not indexed"
        return self.data_dir / "objects" / rows[0][0]

    # -- the first client made by the development PKI ----------------------------------------

    @property
    def client_cert(self) -> Path:
        return self.certs / "clients" / "modality1" / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.certs / "clients" / "modality1" / "client.key"

    @property
    def ca_cert(self) -> Path:
        return self.certs / "ca" / "ca.pem"


# -- TLS clients ------------------------------------------------------------------------------


def client_context(
    cert: Path | None, key: Path | None, ca: Path, *, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    if max_version is not None:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = max_version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def first_client_context(data_dir: Path) -> ssl.SSLContext:
    """The TLS context of the first client (``modality1``) of the development PKI an archive
    made in ``data_dir`` on its first start (an archive run in the test's own process)."""
    certs = data_dir / "certs"
    return client_context(certs / "clients" / "modality1" / "client.pem",
                          certs / "clients" / "modality1" / "client.key", certs / "ca" / "ca.pem")


def associate(
    port: int,
    ctx: ssl.SSLContext | None,
    *,
    calling: str = "MODALITY1",
    called: str = "MIMIC",
    contexts: list[str] | None = None,
    transfer_syntaxes: list[str] | None = None,
) -> Association:
    from pynetdicom import _config
    from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

    _config.STORE_SEND_CHUNKED_DATASET = True  # send files' bytes as they are
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    ae.maximum_pdu_size = 131072
    for uid in contexts or [Verification, CTImageStorage]:
        if transfer_syntaxes:
            ae.add_requested_context(uid, transfer_syntaxes)
        else:
            ae.add_requested_context(uid)
    tls = (ctx, "localhost") if ctx is not None else None
    return ae.associate(HOST, port, ae_title=called, tls_args=tls)


def association_request(
    contexts: list[PresentationContext], calling: str = "MODALITY1", called: str = "MIMIC",
    implementation_class_uid: str = "1.2.826.0.1.3680043.9.3811.0.1",
) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing ``contexts``, encoded by pynetdicom's own classes."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = implementation_class_uid
    primitive.user_information = [max_length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def dcmtk(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert shutil.which(tool), f"{tool} (dcmtk) is not installed"
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def dcmtk_tls(server: MimicProcess, cert: Path | None = None, key: Path | None = None) -> list[str]:
    return [
        "+tls", str(key or server.client_key), str(cert or server.client_cert),
        "+cf", str(server.ca_cert),
    ]


# -- certificates for refusals ----------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def write_cert(
    directory: Path,
    name: str,
    *,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    ca: bool = False,
    server: bool = False,
) -> tuple[Path, Path, x509.Certificate, rsa.RSAPrivateKey]:
    """A key and certificate; self-signed unless ``issuer`` is given.

    ``server=True`` makes a TLS server certificate for localhost/127.0.0.1 (serverAuth, SAN).
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    issuer_name = issuer[0].subject if issuer else _name(name)
    signer = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        ).add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    cert = builder.sign(signer, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert, key


def dev_ca(certs: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert = x509.load_pem_x509_certificate((certs / "ca" / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((certs / "ca" / "ca.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return cert, key


def drained_whole(server: MimicProcess) -> dict[str, Any]:
    """The ``stopped`` line of a server whose drain was not cut short (no ``drain cut
    short`` line from it or any worker)."""
    entries = server.log_entries()
    assert not [e for e in entries if e.get("message") == "drain cut short"], server.log()
    return next(e for e in entries if e.get("message") == "stopped")


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def start_storescp(
    root: Path, server: MimicProcess, port: int
) -> tuple[subprocess.Popen[bytes], Path]:
    """dcmtk ``storescp +tls`` as a C-MOVE destination (AE STORESCP), bit-preserving (+B),
    accepting every transfer syntax (+xa), with a certificate from the archive's dev CA."""
    cert, key, _, _ = write_cert(root / "scp", "storescp", issuer=dev_ca(server.certs),
                                 server=True)
    out = root / "received"
    out.mkdir()
    process = subprocess.Popen(
        ["storescp", "+tls", str(key), str(cert), "+cf", str(server.ca_cert), "-aet", "STORESCP",
         "+xa", "+B", "-od", str(out), "-uf", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )
    return process, out


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM (the drain a container stop gives), SIGKILL after ``timeout``; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def maps_numpy(pid: int) -> bool:
    """Whether process ``pid`` has mapped numpy's compiled parts: it imported numpy. What
    ``mimic serve`` serves DICOM with leaves numpy out (``mimic_server/archive_imports.py``)."""
    return "numpy" in Path(f"/proc/{pid}/maps").read_text()
