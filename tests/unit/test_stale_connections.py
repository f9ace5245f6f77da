"""Pooled PostgreSQL connections that went stale, without a ping before every transaction.

The backends of a test's own database on the real server are ended (``pg_terminate_backend``,
as a server restart or an idle-connection killer would) between two C-STOREs: the next one
must succeed, its instance and its audit row stored once, and so must the next read of every
kind (run once more on a fresh connection). A transaction whose COMMIT lost its
connection is never run again (its outcome is unknown); a database that is down is still
refused at once (``test_store_handler``, ``test_group_commit``: nothing listens on port 9).
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Connection, event, make_url, select, text
from sqlalchemy.exc import DataError, DBAPIError

from mimic_server.backends import index_answers
from mimic_server.dimse.store import handle_store
from mimic_server.errors import OutOfResources
from mimic_server.index import engine as engine_module
from mimic_server.index import schema
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.audit_table import AuditTable, read_table
from mimic_server.index.engine import create_index_engine
from mimic_server.index.models import AuditEvent
from mimic_server.index.repository import SqlIndex
from mimic_server.query.finder import Finder
from mimic_server.query.identifier import parse
from mimic_server.query.keys import Model
from mimic_server.security.audit import AuditLog
from mimic_server.security.audit_records import Archive
from mimic_server.security.policy import Policy
from mimic_server.storage.memory import MemoryStore
from tests import database
from tests.data import ct_small
from tests.unit.test_store_handler import _event, _status

PREFIX = "1.2.826.0.1.3680043.8.498.31."


@pytest.fixture
def url(postgres_server: str) -> Iterator[str]:
    with database.fresh_database(postgres_server) as url:
        engine = create_index_engine(url)
        schema.upgrade(engine)
        engine.dispose()
        yield url


def _admin(server: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server, autocommit=True)


def _terminate(server: str, url: str, pid: int | None = None) -> int:
    """End the backends of ``url``'s database (or the one ``pid``), and wait until they are
    gone: as a restart of the server would, for this database only."""
    name = make_url(url).database
    with _admin(server) as admin:
        query = ("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                 "AND pid <> pg_backend_pid()" + (" AND pid = %s" if pid else ""))
        pids = [row[0] for row in admin.execute(query, [name, pid] if pid else [name])]
        for backend in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", [backend])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                  [pids]).fetchone()
            if alive is not None and alive[0] == 0:
                break
            time.sleep(0.02)
    return len(pids)


def _ct(n: int, series: int = 0) -> Dataset:
    ds = pydicom.dcmread(ct_small())
    del ds.file_meta
    ds.SeriesInstanceUID = f"{PREFIX}1.{series}"
    ds.SOPInstanceUID = f"{PREFIX}2.{n}"
    return ds


def _trail(index: SqlIndex) -> AuditLog:
    table = AuditTable(index.engine)
    return AuditLog(None, sinks=[table], archive=Archive("MIMIC", host="archive-1"),
                    transactional=table)


def _pool_of(index: SqlIndex, connections: int) -> None:
    """Leave ``connections`` open in the pool (several C-STOREs at once would)."""
    held = [index.engine.connect() for _ in range(connections)]
    for conn in held:
        conn.execute(text("SELECT 1"))
    for conn in held:
        conn.close()


def _kept_by_the_group_commit(index: SqlIndex, store: MemoryStore, trail: AuditLog) -> None:
    """A second C-STORE into the first one's series: the first instance of a series has a
    transaction of its own (``SqlIndex._transact(own=True)``), the next one goes through
    the group commit, which keeps its connection."""
    assert _status(handle_store(_event(_ct(3)), store, index, Policy("MIMIC"), trail)) == 0


@pytest.mark.parametrize(("group_commit", "series", "again"), [
    (True, 0, "the statement runs again"),
    # The first instance of a new series, whose transaction waits for its put: its own.
    (True, 1, "index connection lost before commit; the transaction runs again"),
    (True, None, "index connection lost before commit; the batch runs again"),
    (False, 0, "connection lost before commit"),
    (False, 1, "connection lost before commit"),
], ids=["cached-series-group-commit", "new-series-group-commit", "new-series-in-a-batch",
        "cached-series-own-transaction", "new-series-own-transaction"])
def test_a_store_after_the_backends_were_ended_succeeds_once(
    postgres_server: str, url: str, group_commit: bool, series: int | None, again: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three pooled connections (and, with group commit, the one it kept from a C-STORE's
    batch), all ended after the first C-STOREs: the next C-STORE's first statement (the
    instance insert with its audit row, one statement, when its series is known and group
    commit is on; the driver-level instance insert in a transaction without group commit;
    a SQLAlchemy look-up when the series is new, in a transaction of its own or, without
    the wait for a put, in a group-commit batch) finds its connection lost, the pool is
    renewed and the statement or transaction runs once more; one instance row and one
    audit row each."""
    index = SqlIndex(create_index_engine(url), group_commit=group_commit)
    trail, store = _trail(index), MemoryStore()
    try:
        first, second = _ct(1), _ct(2, 1 if series is None else series)
        assert _status(handle_store(_event(first), store, index, Policy("MIMIC"), trail)) == 0
        _kept_by_the_group_commit(index, store, trail)
        _pool_of(index, 3)
        assert _terminate(postgres_server, url) == (4 if group_commit else 3)
        with caplog.at_level(logging.WARNING, logger="mimic_server.index"):
            if series is None:  # the upsert alone: no put to wait for, so a shared batch
                index.upsert_instance(
                    InstanceAttributes.from_header(second), object_key="k/2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1", sha256="0" * 64, size=1,
                    received_from="t")
                store.objects["k/2"] = b""
            else:
                answer = handle_store(_event(second), store, index, Policy("MIMIC"), trail)
                assert _status(answer) == 0x0000
        assert any(again in r.getMessage() for r in caplog.records), [
            r.getMessage() for r in caplog.records]
        assert index.count_instances() == 3 and len(store.objects) == 3
        studied = [r["studies"] for r in read_table(index.engine)]
        audited = [] if series is None else [[second.StudyInstanceUID]]  # no audit row given
        assert studied == [[first.StudyInstanceUID]] * 2 + audited
        assert index.get_instance(second.SOPInstanceUID) is not None
    finally:
        index.engine.dispose()


def test_an_idle_connection_is_pinged_and_replaced_before_a_read(
    postgres_server: str, url: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A connection idle beyond ``IDLE_PING_SECONDS`` is pinged at checkout, and a lost one
    replaced before the read uses it (here every checkout is 'idle': the threshold set to
    0): no read even finds it lost."""
    monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 0.0)
    index = SqlIndex(create_index_engine(url))
    try:
        assert index.count_instances() == 0
        _pool_of(index, 2)
        assert _terminate(postgres_server, url) == 2
        with caplog.at_level(logging.WARNING, logger="mimic_server.index"):
            assert index.count_instances() == 0
            assert index.get_instance(f"{PREFIX}2.9") is None
        assert not [r for r in caplog.records if "lost during a read" in r.getMessage()]
    finally:
        index.engine.dispose()


def test_a_ping_that_finds_the_socket_gone_before_libpq_does_replaces_it(
    url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """psycopg can see a lost connection's socket gone before libpq marks it broken: the
    ping's query raises "connection socket closed" (OperationalError), and its clean-up,
    setting autocommit back, raises a ProgrammingError over it, the connection not yet
    ``broken``. That is a lost connection too: replaced, the read answers (it failed the
    next C-STORE as 'index unavailable' once in CI)."""
    import psycopg

    monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 0.0)
    index = SqlIndex(create_index_engine(url))
    try:
        assert index.count_instances() == 0
        dialect = index.engine.dialect
        real_ping, pings = dialect.do_ping, []

        def ping_as_in_the_race(dbapi_connection: Any) -> bool:
            pings.append(dbapi_connection)
            if len(pings) > 1:
                return real_ping(dbapi_connection)
            try:
                raise psycopg.OperationalError("connection socket closed")
            except psycopg.OperationalError:
                raise psycopg.ProgrammingError(
                    "can't change 'autocommit' now: connection in transaction status ACTIVE"
                ) from None

        monkeypatch.setattr(dialect, "do_ping", ping_as_in_the_race)
        assert index.count_instances() == 0  # on a fresh connection (not pinged: new)
        assert len(pings) == 1 and pings[0].closed  # the one pinged was thrown away
    finally:
        index.engine.dispose()


def _study_identifier(ds: Dataset) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ds.StudyInstanceUID
    identifier.PatientName = ""
    return identifier


def _retrieve_identifier(ds: Dataset) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = ds.StudyInstanceUID
    identifier.SeriesInstanceUID = ds.SeriesInstanceUID
    identifier.SOPInstanceUID = ds.SOPInstanceUID
    return identifier


#: Each read of the DIMSE and DICOMweb services, with what it finds of the one stored CT.
_READS: dict[str, Any] = {
    "count": lambda index, finder, ds: index.count_instances() == 2,  # with _ct(3)
    "get_instance": lambda index, finder, ds: (
        index.get_instance(ds.SOPInstanceUID).sop_instance_uid == ds.SOPInstanceUID),
    "c-find": lambda index, finder, ds: len(list(finder.find(
        parse(_study_identifier(ds), Model.STUDY_ROOT, relational=False)))) == 1,
    "c-move": lambda index, finder, ds: [r.sop_instance_uid for r in finder.instances(
        parse(_retrieve_identifier(ds), Model.STUDY_ROOT, relational=False, retrieve=True)
    )] == [ds.SOPInstanceUID],
    "wado-rs": lambda index, finder, ds: [r.sop_instance_uid for r in finder.instance(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)] == [ds.SOPInstanceUID],
    "readiness": lambda index, finder, ds: index_answers(index.engine) == "postgresql answers",
}


@pytest.mark.parametrize("read", list(_READS))
def test_a_read_after_the_backends_were_ended_runs_once_more(
    postgres_server: str, url: str, read: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """The database restarted (every backend ended) after the pooled connections were last
    used, within ``IDLE_PING_SECONDS``: no ping looks at them, and the read's first try
    finds its connection lost. It is run once more on a fresh one and answers as before,
    rather than failing the C-FIND, C-MOVE, WADO-RS request or readiness check."""
    index = SqlIndex(create_index_engine(url), group_commit=True)
    finder = Finder(index.engine, retrieve_ae_title="MIMIC", max_results=1000)
    trail, store = _trail(index), MemoryStore()
    try:
        stored = _ct(1)
        assert _status(handle_store(_event(stored), store, index, Policy("MIMIC"), trail)) == 0
        _kept_by_the_group_commit(index, store, trail)
        _pool_of(index, 3)
        assert _terminate(postgres_server, url) == 4  # the three, and the group commit's
        with caplog.at_level(logging.WARNING, logger="mimic_server.index"):
            assert _READS[read](index, finder, stored)
        lost = [r for r in caplog.records if "lost during a read" in r.getMessage()]
        assert len(lost) == 1  # one try found it lost; the pool renewed the others with it
    finally:
        index.engine.dispose()


def test_a_read_of_a_database_that_is_down_still_fails_at_once(
    postgres_server: str, url: str,
) -> None:
    """Connecting is not retried: with the database gone for good, the read's one try
    more finds no server either, and C-FIND's 'index unavailable' is as before."""
    index = SqlIndex(create_index_engine(url))
    try:
        _pool_of(index, 1)
        with _admin(postgres_server) as admin:
            name = make_url(url).database
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            try:
                _terminate(postgres_server, url)
                with pytest.raises(OutOfResources, match="index unavailable"):
                    index.count_instances()
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        index.engine.dispose()


def test_only_a_lost_connection_makes_a_read_run_again(tmp_path: Path) -> None:
    """Any other database error (a syntax error, a cancelled statement) is the read's
    answer: it is not run again; a second loss is not tried a third time."""
    tries: list[bool] = []

    def failing(invalidated: bool) -> Any:
        def work(_conn: Connection) -> None:
            tries.append(invalidated)
            raise DBAPIError("SELECT 1", {}, Exception("x"),
                             connection_invalidated=invalidated)
        return work

    engine = create_index_engine(f"sqlite:///{tmp_path / 'index.db'}")
    try:
        with pytest.raises(DBAPIError):
            engine_module.read_index(engine, failing(False))
        assert tries == [False]
        tries.clear()
        with pytest.raises(DBAPIError):
            engine_module.read_index(engine, failing(True))
        assert tries == [True, True]
        assert engine_module.read_index(engine, lambda conn: conn.scalar(text("SELECT 7"))) == 7
    finally:
        engine.dispose()


def _end_backend_at_first_commit(index: SqlIndex, server: str, url: str) -> None:
    """End the backend of the first transaction that commits, as its COMMIT is about to go."""
    armed = [True]

    @event.listens_for(index.engine, "commit")
    def _end_backend(conn: Connection) -> None:
        if armed[0]:
            armed[0] = False
            pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
            _terminate(server, url, pid)


@pytest.mark.parametrize("group_commit", [True, False], ids=["group-commit", "own-transaction"])
def test_a_commit_that_lost_its_connection_is_not_run_again(
    postgres_server: str, url: str, group_commit: bool,
) -> None:
    """The backend ends as the COMMIT is about to go: the outcome is unknown, so the
    transaction is not run again and the caller is told 'index unavailable'."""
    index = SqlIndex(create_index_engine(url), group_commit=group_commit)
    ran: list[int] = []
    _end_backend_at_first_commit(index, postgres_server, url)
    try:
        attrs = InstanceAttributes.from_header(_ct(3))
        with pytest.raises(OutOfResources):
            index.upsert_instance(attrs, transfer_syntax_uid="1.2.840.10008.1.2.1",
                                  object_key="k/3", sha256="0" * 64, size=1,
                                  received_from="t", in_transaction=lambda conn: ran.append(1))
        assert ran == [1]
        assert index.get_instance(attrs.sop_instance_uid) is None
        assert index.count_instances() == 0  # the pool is fresh again
    finally:
        index.engine.dispose()


@pytest.mark.parametrize("group_commit", [True, False], ids=["group-commit", "own-transaction"])
def test_a_c_store_whose_commit_lost_its_connection_keeps_its_object(
    postgres_server: str, url: str, group_commit: bool,
) -> None:
    """The COMMIT of a C-STORE's transaction loses its connection: the server may have
    committed the row, so the object is not deleted (an orphan at worst, which reconcile
    removes; never a row without its object). The C-STORE is refused with 0xA700, and the
    modality's second send is stored normally."""
    index = SqlIndex(create_index_engine(url), group_commit=group_commit)
    trail, store = _trail(index), MemoryStore()
    _end_backend_at_first_commit(index, postgres_server, url)
    try:
        ds = _ct(6)
        answer = handle_store(_event(ds), store, index, Policy("MIMIC"), trail)
        assert _status(answer) == 0xA700
        assert len(store.objects) == 1  # kept: the outcome of the commit is unknown
        assert index.get_instance(ds.SOPInstanceUID) is None  # here it did not commit
        assert _status(handle_store(_event(ds), store, index, Policy("MIMIC"), trail)) == 0
        row = index.get_instance(ds.SOPInstanceUID)
        assert row is not None and row.object_key in store.objects
    finally:
        index.engine.dispose()


def test_an_error_that_is_not_a_lost_commit_deletes_nothing_it_should_keep(url: str) -> None:
    """Only a COMMIT that lost its connection leaves the outcome unknown: a statement the
    database refuses rolls back for certain (the object is deleted by the caller)."""
    from mimic_server.index.engine import commit_outcome_unknown

    index = SqlIndex(create_index_engine(url))
    table = AuditTable(index.engine)
    try:
        bad = InstanceAttributes.from_header(_ct(7))
        with pytest.raises(OutOfResources) as refused:
            index.upsert_instance(bad, transfer_syntax_uid="1.2.840.10008.1.2.1",
                                  object_key="k/7", sha256="0" * 64, size=1, received_from="t",
                                  in_transaction=lambda conn:
                                  table.write_in(conn, _entry(event_code="1" * 17)))
        assert not commit_outcome_unknown(refused.value)
    finally:
        index.engine.dispose()


def _entry(**changes: Any) -> Any:
    from datetime import UTC, datetime

    fields = {"when": datetime(2026, 12, 1, 21, 0, tzinfo=UTC), "event_code": "110104",
              "event_type": None, "outcome": 0, "identity": "CN=ct-1", "trust_name": "ct",
              "calling_ae": "CT01", "user": None, "studies": ("1.2.3", "1.2.4"),
              "xml": "<AuditMessage>Doe^Marker</AuditMessage>"}
    return SimpleNamespace(**{**fields, **changes})


def test_the_driver_level_audit_row_is_the_row_sqlalchemy_writes(url: str) -> None:
    engine = create_index_engine(url)
    try:
        table = AuditTable(engine)
        assert table._driver_insert is not None
        for driver in (table._driver_insert, None):
            table._driver_insert = driver
            with engine.connect() as conn, conn.begin():
                table.write_in(conn, _entry())
        with engine.connect() as conn:
            rows = [row._asdict() for row in conn.execute(
                select(AuditEvent.__table__).order_by(AuditEvent.id))]
        for row in rows:
            row.pop("id")
        assert len(rows) == 2 and rows[0] == rows[1]
        assert rows[0]["studies"] == " 1.2.3 1.2.4 " and rows[0]["event_time"].tzinfo
    finally:
        engine.dispose()


def test_a_driver_level_audit_row_error_is_sqlalchemys_and_rolls_back(url: str) -> None:
    """An audit row the database refuses (an event code too long for its column) fails the
    upsert as SQLAlchemy's error, without the parameters (patient data) in its text; neither
    the instance nor the row is kept, and the next C-STORE's transaction goes through."""
    index = SqlIndex(create_index_engine(url))
    table = AuditTable(index.engine)
    try:
        common = {"transfer_syntax_uid": "1.2.840.10008.1.2.1", "sha256": "0" * 64,
                  "size": 1, "received_from": "t"}
        bad = InstanceAttributes.from_header(_ct(4))
        with pytest.raises(OutOfResources) as refused:
            index.upsert_instance(bad, object_key="k/4", **common, in_transaction=lambda conn:
                                  table.write_in(conn, _entry(event_code="1" * 17)))
        cause = refused.value.__cause__
        assert isinstance(cause, DataError), cause
        assert "Doe^Marker" not in str(cause) and "CN=ct-1" not in str(cause)
        assert index.get_instance(bad.sop_instance_uid) is None
        assert read_table(index.engine) == []
        good = InstanceAttributes.from_header(copy.deepcopy(_ct(5)))
        assert index.upsert_instance(good, object_key="k/5", **common, in_transaction=lambda
                                     conn: table.write_in(conn, _entry())) is None
        assert len(read_table(index.engine)) == 1
    finally:
        index.engine.dispose()


def _tcp_options(engine: Any) -> dict[str, int]:
    """The kernel's settings of a pooled connection's socket, as libpq set them."""
    with engine.connect() as conn:
        fd = conn.connection.dbapi_connection.fileno()
        with socket.socket(fileno=os.dup(fd)) as sock:
            return {
                "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            }


def test_a_silent_database_is_given_up_within_a_minute(url: str) -> None:
    """A database that vanished without a reset is found dead by TCP itself: 30 s for
    unacknowledged bytes, keepalive probes after 30 s of silence (not the kernel's ~15
    minutes and two hours); the URL's own settings win."""
    engine = create_index_engine(url)
    try:
        assert _tcp_options(engine) == {
            "keepalive": 1, "idle": 30, "interval": 10, "count": 3, "user_timeout": 30_000,
        }
    finally:
        engine.dispose()
    engine = create_index_engine(f"{url}?keepalives_idle=120&tcp_user_timeout=5000")
    try:
        options = _tcp_options(engine)
        assert (options["idle"], options["user_timeout"], options["count"]) == (120, 5000, 3)
    finally:
        engine.dispose()
