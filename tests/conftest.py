from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom.association import Association

from mimic_server.net.requestor import keep_responses
from tests import database
from tests.azurite import AZURITE_BLOB, Azurite
from tests.support import MimicProcess

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session", autouse=True)
def requestors_keep_their_responses() -> Iterator[None]:
    """Every requestor association this process opens (the tests' pynetdicom SCUs) is
    guarded against pynetdicom's own race (issue 875, ``mimic_server/net/requestor.py``), in
    which the association's thread takes a response off the queue and drops it when the
    process is busy: a test that counts C-FIND matches or C-GET sub-operations must count
    what the archive sent, not what a loaded test client happened to keep."""
    start = Association.start

    def start_guarded(self: Association) -> None:
        if self.is_requestor:
            keep_responses(self)
        start(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Association, "start", start_guarded)
        yield


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    with database.server() as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An empty, migrated index database: SQLite, then PostgreSQL (every module runs on both)."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "index.sqlite3"
        url = f"sqlite:///{path}"
        migrate(url)
        yield url
        return
    server = request.getfixturevalue("postgres_server")
    with database.fresh_database(server) as url:
        migrate(url)
        yield url


def migrate(url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mimic_server", "db", "upgrade", "--database-url", url],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[MimicProcess]:
    """A real ``mimic serve`` process, zero-config (dev PKI on first start), for one module."""
    root: Path = tmp_path_factory.mktemp("mimic")
    process = MimicProcess(
        root / "data", cert_refresh_seconds="1", database_url=database_url,
        audit_refusal_interval="1",  # refusals logged as counts: repeats show within 1 s
    ).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One Azurite blob service for the session (loopback, its own directory)."""
    if not AZURITE_BLOB.exists():
        pytest.skip("Azurite is not installed: run scripts/test.sh (npm install)")
    service = Azurite(tmp_path_factory.mktemp("azurite")).start()
    yield service
    service.stop()
