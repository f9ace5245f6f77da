"""Migration 0004 on the real PostgreSQL server: instance headers written from then on are
compressed with lz4, rows stored before keep pglz and read as before, and where the change
cannot be made (a role that does not own the table; the table's lock held by a reader beyond
the migration's lock timeout) headers keep pglz and the migration goes on."""

from __future__ import annotations

import copy
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pydicom
import pytest
from alembic import command
from sqlalchemy import Engine, make_url, text

from mimic_server.index import schema
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.engine import create_index_engine
from mimic_server.index.repository import SqlIndex
from tests import database
from tests.data import ct_small

UID_ROOT = "1.2.826.0.1.3680043.8.498.44"


@pytest.fixture
def url(postgres_server: str) -> Iterator[str]:
    """A fresh database whose default compression is pglz, whatever the server's."""
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        version = admin.execute("SHOW server_version_num").fetchone()
    if version is None or int(version[0]) < 140000:
        pytest.skip("column compression methods need PostgreSQL 14")
    with database.fresh_database(postgres_server) as url:
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{make_url(url).database}" '
                          "SET default_toast_compression = 'pglz'")
        yield url


def _migrate(engine: Engine, revision: str) -> None:
    config = schema._config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def _store(engine: Engine, n: int) -> dict[str, Any]:
    ds = copy.deepcopy(pydicom.dcmread(ct_small(), stop_before_pixels=True))
    ds.SOPInstanceUID = f"{UID_ROOT}.3.{n}"
    attrs = InstanceAttributes.from_header(ds)
    index = SqlIndex(engine)
    try:
        index.upsert_instance(
            attrs, transfer_syntax_uid="1.2.840.10008.1.2.1",
            object_key=f"k/{n}", sha256="0" * 64, size=1, received_from="test",
        )
    finally:
        index.close()
    return attrs.header


def _upgraded_keeps_lock_timeout(engine: Engine) -> bool:
    """Upgrade to head in one transaction; whether its lock timeout is as it was before."""
    config = schema._config()
    with engine.begin() as conn:
        before = conn.exec_driver_sql("SHOW lock_timeout").scalar_one()
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        return bool(conn.exec_driver_sql("SHOW lock_timeout").scalar_one() == before)


def _compression(engine: Engine) -> dict[str, str | None]:
    """SOP Instance UID -> the method its stored header was compressed with."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT sop_instance_uid, pg_column_compression(header) FROM instances"))
        return {str(uid): method for uid, method in rows}


def _header(engine: Engine, n: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT header FROM instances WHERE sop_instance_uid = :u"),
                            {"u": f"{UID_ROOT}.3.{n}"}).scalar_one()


def test_headers_written_after_0004_are_lz4_and_older_ones_read_as_before(url: str) -> None:
    engine = create_index_engine(url)
    try:
        _migrate(engine, "0003")
        before = _store(engine, 1)
        assert _upgraded_keeps_lock_timeout(engine)
        assert schema.current_revision(engine) == schema.head_revision()
        after = _store(engine, 2)
        assert _compression(engine) == {f"{UID_ROOT}.3.1": "pglz", f"{UID_ROOT}.3.2": "lz4"}
        assert _header(engine, 1) == before and _header(engine, 2) == after
        # Downgraded: the column's default again, and what was stored still reads.
        config = schema._config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0003")
        _store(engine, 3)
        assert _compression(engine)[f"{UID_ROOT}.3.3"] == "pglz"
        assert _header(engine, 2) == after
    finally:
        engine.dispose()


def test_0004_goes_on_where_the_column_cannot_be_changed(
    postgres_server: str, url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """The tables belong to another role (as a stand-in for a server without lz4: the
    ALTER fails either way): the migration warns, keeps pglz, and still completes."""
    owner = create_index_engine(url)
    name = make_url(url).database
    role = f"mimic_migrator_{name[-12:]}"
    password = secrets.token_hex(16)
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    try:
        _migrate(owner, "0003")
        owner.dispose()
        with psycopg.connect(make_url(postgres_server).set(database=name).render_as_string(
                hide_password=False), autocommit=True) as admin:
            admin.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
            admin.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
            # Later migrations create tables (0005), as any role that migrates must.
            admin.execute(f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"')
        migrator = create_index_engine(
            make_url(url).set(username=role, password=password)
            .render_as_string(hide_password=False))
        try:
            with caplog.at_level(logging.WARNING, logger="mimic_server.index.migrations"):
                schema.upgrade(migrator)
            assert schema.current_revision(migrator) == schema.head_revision()
            assert any("stay compressed with pglz" in r.getMessage() for r in caplog.records)
            _store(migrator, 1)
            assert _compression(migrator) == {f"{UID_ROOT}.3.1": "pglz"}
        finally:
            migrator.dispose()
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_0004_does_not_wait_long_for_the_tables_lock(url: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A reader holds the table (an open C-FIND page, ``mimic reconcile``'s cursor): the
    migration waits at most its lock timeout, keeps pglz, warns with the statement to run
    later, completes, and leaves the session's lock timeout as it found it."""
    engine = create_index_engine(url)
    try:
        _migrate(engine, "0003")
        with engine.connect() as reader:
            reader.execute(text("SELECT count(*) FROM instances"))  # its transaction stays open
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="mimic_server.index.migrations"):
                assert _upgraded_keeps_lock_timeout(engine)
            assert time.monotonic() - started < 30
            reader.rollback()
        assert schema.current_revision(engine) == schema.head_revision()
        assert any("lock timeout" in r.getMessage() for r in caplog.records)
        assert any("to set it later, run: ALTER TABLE instances" in r.getMessage()
                   for r in caplog.records)
        _store(engine, 1)
        assert _compression(engine) == {f"{UID_ROOT}.3.1": "pglz"}
    finally:
        engine.dispose()
