"""PostgreSQL as the index of several server processes; outages of the database itself."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from mimic_server.index import schema
from tests import database
from tests.conftest import migrate
from tests.data import ct_copy
from tests.support import MimicProcess, associate, client_context

EXPLICIT = "1.2.840.10008.1.2.1"


def _copy(tmp: Path, n: int, series: int) -> Path:
    return ct_copy(tmp, f"1.2.826.0.1.3680043.8.498.301.{series}.{n}",
                   f"1.2.826.0.1.3680043.8.498.300.{series}")


def _counts(url: str) -> tuple[int, ...]:
    engine = create_engine(url)
    with engine.connect() as conn:
        counts = tuple(
            int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
            for t in ("patients", "studies", "series", "instances")
        )
    engine.dispose()
    return counts


@pytest.fixture
def pg_url(postgres_server: str) -> Iterator[str]:
    with database.fresh_database(postgres_server) as url:
        migrate(url)
        yield url


def test_two_processes_eight_senders_one_study(pg_url: str, tmp_path: Path) -> None:
    first = MimicProcess(tmp_path / "a", database_url=pg_url).start()
    second = MimicProcess(tmp_path / "b", database_url=pg_url).start()
    files = tmp_path / "files"
    files.mkdir()
    per_sender = 15
    paths = {s: [_copy(files, n, s) for n in range(per_sender)] for s in range(8)}
    errors: list[str] = []

    def sender(index: int) -> None:
        target = first if index % 2 == 0 else second
        ctx = client_context(target.client_cert, target.client_key, target.ca_cert)
        assoc = associate(target.port, ctx, transfer_syntaxes=[EXPLICIT])
        for path in paths[index]:
            status = assoc.send_c_store(path)
            if status.Status != 0:
                errors.append(hex(status.Status))
        assoc.release()

    try:
        threads = [threading.Thread(target=sender, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        assert first.stop() == 0 and second.stop() == 0
    assert not errors
    # One patient, one study, eight series, every instance: no duplicates, nothing lost.
    assert _counts(pg_url) == (1, 1, 8, 8 * per_sender)


def test_server_refuses_an_outdated_schema(postgres_server: str, tmp_path: Path) -> None:
    with database.fresh_database(postgres_server) as url:
        from mimic_server.index import schema
        from mimic_server.index.engine import create_index_engine

        engine = create_index_engine(url)
        from alembic import command

        config = schema._config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")
        engine.dispose()
        result = subprocess.run(
            [sys.executable, "-m", "mimic_server", "serve", "--host", "127.0.0.1", "--port", "0",
             "--data-dir", str(tmp_path / "data"), "--database-url", url, "--workers", "2",
             "--ops-port", "0"],  # not the shared default 8080, which another test may hold
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 2
        assert "mimic db upgrade" in result.stderr and "0001" in result.stderr
        # The workers start before the supervisor's check, held until it is done: the
        # refused start leaves none of them behind.
        workers = [int(pid) for pid in re.findall(r'"pid": (\d+)', result.stderr)]
        assert len(workers) >= 2, result.stderr
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def test_database_down_during_store_then_back(tmp_path: Path) -> None:
    """A private cluster that this test stops and restarts (never the shared one)."""
    cluster = database.PrivateCluster()
    cluster.start()
    try:
        with database.fresh_database(cluster.url) as url:
            migrate(url)
            server = MimicProcess(tmp_path / "data", database_url=url).start()
            try:
                ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
                files = tmp_path / "files"
                files.mkdir()
                first, second = _copy(files, 1, 1), _copy(files, 2, 1)
                assoc = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT])
                assert assoc.send_c_store(first).Status == 0
                assoc.release()

                cluster.stop()
                assoc = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT])
                failed = assoc.send_c_store(second)
                assoc.release()
                assert failed.Status == 0xA700 and failed.ErrorComment
                assert len(server.stored_objects()) == 1  # no orphan object

                cluster.start()
                assoc = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT])
                assert assoc.send_c_store(second).Status == 0  # recovered by itself
                assoc.release()
                assert server.instance_count() == 2
                assert len(server.stored_objects()) == 2
            finally:
                assert server.stop() == 0, server.log()
    finally:
        cluster.remove()


def test_nan_and_long_integers_stored_through_the_network(pg_url: str, tmp_path: Path) -> None:
    """These valid objects were answered 0xA700 ("try again later") on every retry."""
    import pydicom

    server = MimicProcess(tmp_path / "data", database_url=pg_url).start()
    try:
        files = tmp_path / "files"
        files.mkdir()
        paths = []
        for n, change in enumerate((_nan, _long_integers)):
            path = _copy(files, n, 9)
            ds = pydicom.dcmread(path)
            change(ds)
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
        assoc = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT])
        statuses = [assoc.send_c_store(path).Status for path in paths]
        assoc.release()
    finally:
        assert server.stop() == 0
    assert statuses == [0, 0]
    assert _counts(pg_url)[3] == 2


def _nan(ds: object) -> None:
    ds.add_new(0x00189089, "FD", [float("nan"), 0.0, 1.0])  # type: ignore[attr-defined]
    ds.add_new(0x00189328, "FD", float("inf"))  # type: ignore[attr-defined]
    ds.add_new(0x00189087, "FD", -float("inf"))  # type: ignore[attr-defined]


def _long_integers(ds: object) -> None:
    ds.SeriesNumber = "99999999999"  # type: ignore[attr-defined]
    ds.InstanceNumber = "-9999999999"  # type: ignore[attr-defined]


@pytest.fixture
def url_without_create_privilege(postgres_server: str) -> Iterator[str]:
    """A fresh database and a role that may create tables in its schema but not extensions:
    pg_trgm is a trusted extension (PostgreSQL 13+), which needs CREATE on the database, as
    on a managed server that has not allow-listed it."""
    with database.fresh_database(postgres_server) as url, database.role(
            postgres_server, url, "GRANT USAGE, CREATE ON SCHEMA public TO {role}") as role_url:
        yield role_url


def test_upgrade_without_pg_trgm_then_name_search(
    url_without_create_privilege: str, tmp_path: Path
) -> None:
    """Migration 0002 goes on without the trigram indexes when the extension cannot be
    created, and C-FIND by name still answers (by scanning)."""
    url = url_without_create_privilege
    upgrade = subprocess.run(
        [sys.executable, "-m", "mimic_server", "db", "upgrade", "--database-url", url],
        capture_output=True, text=True, timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    assert "pg_trgm is not available" in upgrade.stderr
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == \
            schema.head_revision()
        for absent in ("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'",
                       "SELECT 1 FROM pg_indexes WHERE indexname LIKE '%trgm'"):
            assert conn.execute(text(absent)).first() is None
    engine.dispose()

    server = MimicProcess(tmp_path / "data", database_url=url).start()
    try:
        ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
        assoc = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT])
        assert assoc.send_c_store(_copy(tmp_path, 1, 1)).Status == 0
        assoc.release()
        assert _names(server, "compressed*") == ["CompressedSamples^CT1"]
        assert _names(server, "*SAMPLES^ct1") == ["CompressedSamples^CT1"]
        assert _names(server, "nobody*") == []
    finally:
        assert server.stop() == 0, server.log()


def _names(server: MimicProcess, pattern: str) -> list[str]:
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind as FIND,
    )

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientName = pattern
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    assoc = associate(server.port, ctx, contexts=[FIND])
    names, final = [], None
    for status, answer in assoc.send_c_find(identifier, FIND):
        if status.Status == 0xFF00:
            names.append(str(answer.PatientName))
        else:
            final = status.Status
    assoc.release()
    assert final == 0x0000
    return names
