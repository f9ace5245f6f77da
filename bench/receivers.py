"""The C-STORE receivers the comparison runs: Orthanc (SQLite / PostgreSQL index) and MIMIC in
its three deployments (embedded; PostgreSQL + file store; PostgreSQL + Azurite).

Each is a ``store_throughput.Server``: started fresh for one run (its own temp directory, its
own PostgreSQL database, its own Azurite), asked how many instances it holds, stopped and
cleaned up. dcmtk ``storescp`` (the reference) is ``store_throughput.StorescpServer``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg

from bench.bare_pynetdicom import BarePynetdicom
from bench.store_throughput import (
    HOST,
    ROOT,
    START_TIMEOUT,
    BenchError,
    MimicServer,
    Pki,
    Server,
    StorescpServer,
    free_port,
    tail,
    wait_for_port,
)
from tests.azurite import AZURITE_BLOB, Azurite, connection_string

ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_PG_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
ORTHANC_APT = "apt-get install -y orthanc orthanc-postgresql"
DEFAULT_POSTGRES = f"postgresql://postgres@{HOST}:5432/postgres"


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (with the command that installs it), or None."""
    missing = [p for p in (ORTHANC, ORTHANC_PG_PLUGIN) if not Path(p).exists()]
    if missing:
        return f"{', '.join(missing)} missing: install Orthanc with `sudo {ORTHANC_APT}`"
    return None


def azurite_missing() -> str | None:
    if not AZURITE_BLOB.exists():
        return f"{AZURITE_BLOB} missing: run `npm ci` in the repository root"
    return None


def orthanc_version() -> str:
    out = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True, timeout=10,
                         check=False)
    return out.stdout.splitlines()[0].strip() if out.stdout else ""


class Database:
    """A fresh PostgreSQL database on the shared server, dropped afterwards."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.name = f"mimic_bench_{uuid.uuid4().hex[:12]}"
        base = server_url.rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"  # libpq URL
        self.created = False

    @property
    def sqlalchemy_url(self) -> str:
        return self.url.replace("postgresql://", "postgresql+psycopg://", 1)

    def create(self, template: str | None = None) -> None:
        clause = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"{clause}')
        self.created = True

    def drop(self) -> None:
        if not self.created:
            return
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.created = False

    def count_instances(self) -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT count(*) FROM instances").fetchone()
            return int(row[0]) if row else 0


# -- Orthanc ----------------------------------------------------------------------------------


class OrthancServer(Server):
    """Orthanc from Debian with its SQLite index (this class) or the PostgreSQL index plugin.

    Defaults of the Debian package kept except what a benchmark must set: its own storage,
    ports and AE title, no HTTP authentication (loopback only), the same 128 KB PDU that
    ``storescp`` gets, TLS with the same PKI as MIMIC (mutual: the client certificate is
    required). ``SyncStorageArea`` stays true (Debian's default: each file is fsynced).
    Orthanc 1.10 has no setting for the DICOM listener's address: it listens on every
    interface, on a free port.
    """

    label = "orthanc-sqlite"
    called_ae = "ORTHANC"

    def __init__(self, workdir: Path, pki: Pki | None, postgres: str | None = None) -> None:
        super().__init__(workdir, pki)
        self.http_port = free_port()
        self.postgres = postgres
        #: Settings a benchmark adds (``retrieve.py``: C-GET allowed to any peer).
        self.extra_config: dict[str, object] = {}

    def config(self) -> dict[str, object]:
        cfg: dict[str, object] = {
            "Name": "bench",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.called_ae,
            "DicomPort": self.port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "MaximumPduLength": 131072,
            "SaveJobs": False,
            "Plugins": [],
            **self.extra_config,
        }
        if self.pki is not None:
            cfg.update(
                DicomTlsEnabled=True,
                DicomTlsCertificate=str(self.pki.server_cert),
                DicomTlsPrivateKey=str(self.pki.server_key),
                DicomTlsTrustedCertificates=str(self.pki.ca),
                DicomTlsRemoteCertificateRequired=True,
            )
        return cfg

    def command(self) -> tuple[list[str], dict[str, str]]:
        config = self.workdir / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        # TCP_NODELAY=1: Orthanc's DICOM network layer is dcmtk's, which leaves Nagle's
        # algorithm on without it (40 ms per object against the peer's delayed ACK), as
        # storescu and storescp get it too.
        return [ORTHANC, str(config)], {"PATH": "/usr/bin:/bin", "HOME": str(self.workdir),
                                        "TCP_NODELAY": "1"}

    def rest(self, path: str) -> dict[str, object]:
        url = f"http://{HOST}:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"Orthanc exited {self.proc.returncode}:\n{tail(self.log_path)}")
            with contextlib.suppress(OSError, ValueError):
                self.rest("/system")
                break
            time.sleep(0.2)
        else:
            raise BenchError(f"Orthanc did not answer on HTTP:\n{tail(self.log_path)}")
        wait_for_port(self.port, self.proc, self.log_path, START_TIMEOUT)

    def count(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])  # type: ignore[call-overload]


class OrthancPostgresServer(OrthancServer):
    """Orthanc with the PostgreSQL index plugin (files stay in its storage directory)."""

    label = "orthanc-pg"

    def __init__(self, workdir: Path, pki: Pki | None, postgres: str | None = None) -> None:
        super().__init__(workdir, pki, postgres)
        self.database = Database(postgres or DEFAULT_POSTGRES)

    def config(self) -> dict[str, object]:
        cfg = super().config()
        info = psycopg.conninfo.conninfo_to_dict(self.database.url)
        cfg["Plugins"] = [ORTHANC_PG_PLUGIN]
        cfg["PostgreSQL"] = {
            "EnableIndex": True,
            "EnableStorage": False,
            "Host": info.get("host", HOST),
            "Port": int(info.get("port", 5432)),
            "Database": self.database.name,
            "Username": info.get("user", "postgres"),
            "Password": info.get("password", ""),
            "Lock": True,
            "EnableSsl": False,
        }
        return cfg

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.database.create()
        super().start()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.database.drop()


# -- MIMIC ------------------------------------------------------------------------------------


class MimicEmbedded(MimicServer):
    """``mimic serve`` with its defaults: SQLite index and file store in the data directory."""

    label = "mimic-embedded"

    def __init__(self, workdir: Path, pki: Pki | None, postgres: str | None = None) -> None:
        super().__init__(workdir, pki)
        self.postgres = postgres


#: Per PostgreSQL server: a database brought to MIMIC's schema by ``mimic db upgrade`` once,
#: copied (``CREATE DATABASE ... TEMPLATE``) for every run; dropped by ``shutdown()``.
_TEMPLATES: dict[str, Database] = {}
#: One Azurite for all the runs (each run has its own container, deleted afterwards).
_AZURITE: list[Azurite] = []


def _schema_template(server_url: str, env: dict[str, str]) -> Database:
    template = _TEMPLATES.get(server_url)
    if template is None:
        template = Database(server_url)
        template.create()
        _TEMPLATES[server_url] = template
        upgraded = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "mimic"), "db", "upgrade", "--database-url",
             template.sqlalchemy_url],
            capture_output=True, text=True, timeout=300, check=False,
            env={**env, "MIMIC_DATABASE_URL": template.sqlalchemy_url},
        )
        if upgraded.returncode != 0:
            raise BenchError(f"mimic db upgrade failed: {upgraded.stderr[-2000:]}")
    return template


def shared_azurite(work: Path) -> Azurite:
    if not _AZURITE:
        _AZURITE.append(Azurite(work / "azurite").start())
    return _AZURITE[0]


def shutdown() -> None:
    """Drop the schema templates, stop the shared Azurite (the end of a benchmark)."""
    while _TEMPLATES:
        _, template = _TEMPLATES.popitem()
        with contextlib.suppress(psycopg.Error):
            template.drop()
    while _AZURITE:
        _AZURITE.pop().stop()


class MimicPostgresFiles(MimicEmbedded):
    """PostgreSQL index (a fresh database at the current schema) + file store."""

    label = "mimic-pg-files"
    #: The database URL MIMIC is given; ``latency.py`` points it at a delaying proxy.
    database_host: tuple[str, int] | None = None

    def __init__(self, workdir: Path, pki: Pki | None, postgres: str | None = None) -> None:
        super().__init__(workdir, pki, postgres)
        self.database = Database(postgres or DEFAULT_POSTGRES)

    def mimic_database_url(self) -> str:
        url = self.database.sqlalchemy_url
        if self.database_host is not None:
            info = psycopg.conninfo.conninfo_to_dict(self.database.url)
            user = info.get("user", "postgres")
            host, port = self.database_host
            url = f"postgresql+psycopg://{user}@{host}:{port}/{self.database.name}"
        return url

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["MIMIC_DATABASE_URL"] = self.mimic_database_url()
        return env

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        template = _schema_template(self.database.server_url, self.environment())
        self.database.create(template=template.name)
        super().start()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.database.drop()

    def count(self) -> int:
        return self.database.count_instances()


class MimicPostgresAzurite(MimicPostgresFiles):
    """PostgreSQL index + Blob Storage: Azurite (one for the benchmark; a new container for
    each run, which MIMIC creates on start and the benchmark deletes afterwards)."""

    label = "mimic-pg-azurite"
    #: The blob endpoint MIMIC is given; ``latency.py`` points it at a delaying proxy.
    blob_port: int | None = None

    def __init__(self, workdir: Path, pki: Pki | None, postgres: str | None = None) -> None:
        super().__init__(workdir, pki, postgres)
        self.azurite = shared_azurite(workdir.parent.parent)
        self.container = f"bench-{uuid.uuid4().hex[:16]}"

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["MIMIC_BLOB_CONNECTION_STRING"] = connection_string(
            self.blob_port if self.blob_port is not None else self.azurite.port
        )
        env["MIMIC_BLOB_CONTAINER"] = self.container
        return env

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            from azure.storage.blob import BlobServiceClient

            client = BlobServiceClient.from_connection_string(
                connection_string(self.azurite.port))
            with contextlib.suppress(Exception):
                client.delete_container(self.container)


RECEIVERS: dict[str, type[Server]] = {
    "storescp": StorescpServer,  # the reference, first
    "orthanc-sqlite": OrthancServer,
    "orthanc-pg": OrthancPostgresServer,
    "mimic-embedded": MimicEmbedded,
    "mimic-pg-files": MimicPostgresFiles,
    "mimic-pg-azurite": MimicPostgresAzurite,
}


def make_receiver(label: str, workdir: Path, pki: Pki | None, postgres: str) -> Server:
    if label == "storescp":
        return StorescpServer(workdir, pki)
    if label == BarePynetdicom.label:  # a reference per association (association_cpu.py)
        return BarePynetdicom(workdir, pki)
    cls = RECEIVERS[label]
    return cls(workdir, pki, postgres)  # type: ignore[call-arg]
