"""The PostgreSQL connections of one process: at most ``MIMIC_DATABASE_POOL_SIZE``, group-commit
batches that leave some of them to the rest, and a new connection tried again while the
database has no slot for it."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pydicom
import pytest
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from mimic_server.config import Settings
from mimic_server.dimse.store import handle_store
from mimic_server.index import engine as engine_module
from mimic_server.index.engine import create_index_engine, no_slot
from mimic_server.index.repository import SqlIndex, pg_in_flight
from mimic_server.security.policy import Policy
from mimic_server.storage.memory import MemoryStore
from tests import database
from tests.conftest import migrate
from tests.data import ct_small
from tests.unit.test_store_handler import _event, _status


@pytest.fixture
def migrated_url(postgres_server: str) -> Iterator[str]:
    with database.fresh_database(postgres_server) as url:
        migrate(url)
        yield url


@pytest.fixture(autouse=True)
def _not_yet_said(monkeypatch: pytest.MonkeyPatch) -> None:
    """The WARNING is said once a minute per process: as if not yet in this one."""
    monkeypatch.setattr(engine_module, "_said_no_slot", [-engine_module._SLOT_WARNING_SECONDS])


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def test_the_pool_holds_at_most_its_size(migrated_url: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "POOL_WAIT_SECONDS", 0.2)
    engine = create_index_engine(migrated_url, pool_size=3)
    held = [engine.connect() for _ in range(3)]
    try:
        for conn in held:
            conn.execute(text("SELECT 1"))
        with pytest.raises(sa_exc.TimeoutError):
            engine.connect()
        held.pop().close()
        with engine.connect() as conn:  # the connection given back
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        for conn in held:
            conn.close()
        engine.dispose()


@pytest.mark.parametrize(("pool", "in_flight"), [(2, 1), (3, 2), (4, 3), (9, 8), (10, 8), (32, 8)])
def test_batches_in_flight_leave_connections_to_the_rest(pool: int, in_flight: int) -> None:
    assert pg_in_flight(pool) == in_flight


def test_the_index_takes_its_batches_from_the_pool_size(migrated_url: str) -> None:
    engine = create_index_engine(migrated_url, pool_size=3)
    index = SqlIndex(engine, pool_size=3)
    try:
        assert index.committer is not None and index.committer.in_flight == 2
    finally:
        index.close()
        engine.dispose()


@pytest.mark.parametrize("holder", ["another client", "this process"])
def test_a_connection_waits_for_the_slot_its_holder_gives_up(
    migrated_url: str, postgres_server: str, caplog: pytest.LogCaptureFixture, holder: str,
) -> None:
    """The role's one slot is held, then given up after 0.5 s: by another client, whose
    slot the retried connection then takes; or by this process, whose connection goes back
    to its pool and is taken from there (review: retried in a ``do_connect`` listener, the
    checkout held the pool's place and failed after 5 s beside that idle connection)."""
    with database.limited_role(postgres_server, migrated_url, 1) as url:
        engine = create_index_engine(url, pool_size=2)
        if holder == "another client":
            held: Any = psycopg.connect(_plain(url))
        else:
            held = engine.connect()
            held.execute(text("SELECT 1"))
        given_up = threading.Timer(0.5, held.close)
        try:
            caplog.set_level(logging.WARNING, logger="mimic_server.index.engine")
            given_up.start()
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
        finally:
            given_up.cancel()
            held.close()
            engine.dispose()
    assert [r.getMessage() for r in caplog.records] == [
        "the database has no connection slot free; connecting again"]


def test_a_slot_not_freed_in_time_fails_the_connection(
    migrated_url: str, postgres_server: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "SLOT_WAIT_SECONDS", 0.3)
    with database.limited_role(postgres_server, migrated_url, 1) as url:
        engine = create_index_engine(url, pool_size=2)
        try:
            with psycopg.connect(_plain(url)), pytest.raises(sa_exc.OperationalError) as raised:
                engine.connect()
            assert no_slot(raised.value)
        finally:
            engine.dispose()


def test_other_connection_failures_are_not_waited_for(
    migrated_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    engine = create_index_engine(migrated_url.rsplit("/", 1)[0] + "/mimic_no_such_database")
    caplog.set_level(logging.WARNING, logger="mimic_server.index.engine")
    try:
        with pytest.raises(sa_exc.OperationalError) as raised:
            engine.connect()
        assert "does not exist" in str(raised.value) and not no_slot(raised.value)
    finally:
        engine.dispose()
    assert not caplog.records


@pytest.mark.parametrize("message", [
    "FATAL:  sorry, too many clients already",
    'FATAL:  too many connections for role "mimic"',
    'FATAL:  too many connections for database "mimic"',
    "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute",
    "FATAL:  remaining connection slots are reserved for non-replication superuser connections",
])
def test_what_postgresql_says_when_it_has_no_slot(message: str) -> None:
    assert no_slot(psycopg.OperationalError(f"connection failed: {message}"))


def test_batches_in_flight_must_leave_a_connection() -> None:
    url = "postgresql+psycopg://mimic@127.0.0.1/mimic"
    with pytest.raises(ValidationError, match="must be below database_pool_size"):
        Settings(database_url=url, database_pool_size=4, group_commit_in_flight=4)
    assert Settings(database_url=url, database_pool_size=5,
                    group_commit_in_flight=4).group_commit_in_flight == 4
    # SQLite's connections are not the database server's: no such bound.
    assert Settings(database_pool_size=2, group_commit_in_flight=8).group_commit_in_flight == 8


def test_a_c_store_without_a_slot_is_refused_and_nothing_is_kept(
    migrated_url: str, postgres_server: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the DIMSE level: PostgreSQL has no slot for the C-STORE's transaction and frees
    none within the wait: 0xA700 (Out of Resources), the object's put undone, no row."""
    monkeypatch.setattr(engine_module, "SLOT_WAIT_SECONDS", 0.3)
    ds = copy.deepcopy(pydicom.dcmread(ct_small()))
    del ds.file_meta
    store = MemoryStore()
    with database.limited_role(postgres_server, migrated_url, 1) as url:
        engine = create_index_engine(url, pool_size=3)
        index = SqlIndex(engine, pool_size=3)
        try:
            with psycopg.connect(_plain(url)):  # the role's one slot, held throughout
                assert _status(handle_store(_event(ds), store, index,
                                            Policy("MIMIC"))) == 0xA700
        finally:
            index.close()
            engine.dispose()
    assert not store.objects
    with psycopg.connect(_plain(migrated_url)) as conn:
        assert conn.execute("SELECT count(*) FROM instances").fetchone() == (0,)
