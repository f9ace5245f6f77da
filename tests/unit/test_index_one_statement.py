"""PostgreSQL's new instance of a known series: one statement that commits itself
(``repository.SqlIndex._alone``, ``group_commit.GroupCommitter._commit_alone``).

Checked against the real server: the statement is all that is sent (no BEGIN, no COMMIT of a
transaction), its instance row and audit row are the ones the transaction path writes, a
refused statement leaves no connection in autocommit behind, a statement whose connection was
lost after it committed is found to be its own row (once, with one audit row), and a known SOP
Instance UID is still replaced in a transaction.
"""

from __future__ import annotations

import tempfile
from typing import Any

import psycopg
import pydicom
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from mimic_server.dimse.store import handle_store
from mimic_server.index import schema
from mimic_server.index.audit_table import AuditTable
from mimic_server.index.driver import DriverStatement
from mimic_server.index.engine import create_index_engine
from mimic_server.index.models import AuditEvent, Instance
from mimic_server.index.repository import SqlIndex
from mimic_server.security.policy import Policy
from mimic_server.storage.memory import MemoryStore
from tests import database
from tests.data import ct_small
from tests.unit.test_group_commit import COMMON, PREFIX, _attrs, _audit_entry
from tests.unit.test_stale_connections import _trail
from tests.unit.test_store_handler import _event, _status

#: The ``index`` fixture (``tests/unit/conftest.py``) on PostgreSQL only.
pytestmark = [pytest.mark.postgres,
              pytest.mark.parametrize("index", ["postgresql"], indirect=True)]


def _audit(index: SqlIndex, n: int) -> Any:
    """The C-STORE's ``in_transaction``: its audit row, into the table."""
    table = AuditTable(index.engine)
    entry = _audit_entry(n)
    return lambda conn: table.write_in(conn, entry)


def _columns(index: SqlIndex, model: Any, skip: set[str]) -> list[dict[str, Any]]:
    with index.engine.connect() as conn:
        rows = conn.execute(select(model.__table__).order_by(model.id)).mappings().all()
    return [{k: v for k, v in row.items() if k not in skip} for row in rows]


class _Sent:
    """Every statement psycopg runs for the index (cursor executes and transaction commands)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sql: list[str] = []
        cursor_execute = psycopg.Cursor.execute
        commit = psycopg.Connection.commit

        def execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            self.sql.append(str(query).split(None, 1)[0].upper())
            return cursor_execute(cursor, query, *args, **kwargs)

        def committed(conn: Any) -> None:
            self.sql.append("COMMIT")
            commit(conn)

        monkeypatch.setattr(psycopg.Cursor, "execute", execute)
        monkeypatch.setattr(psycopg.Connection, "commit", committed)


def _messages(pgconn: Any, run: Any) -> list[str]:
    """The protocol messages libpq sends while ``run()`` runs (its trace: ``F`` lines), each
    as its type and its first words."""
    with tempfile.TemporaryFile() as trace:
        pgconn.trace(trace.fileno())
        try:
            run()
        finally:
            pgconn.untrace()
        trace.seek(0)
        lines = trace.read().decode(errors="replace").splitlines()
    return [" ".join(line.split("\t")[3:])[:40] for line in lines
            if line.count("\t") >= 3 and line.split("\t")[1] == "F"]


@pytest.mark.parametrize("in_flight", [8, 1])
def test_a_new_instance_of_a_known_series_is_one_statement(
    index: SqlIndex, monkeypatch: pytest.MonkeyPatch, in_flight: int,
) -> None:
    """One Bind / Execute / Sync on the wire: no BEGIN, no COMMIT, one round trip. Also with
    one batch in flight, as a small pool has (``repository.pg_in_flight``): its leader once
    began a transaction first, as on SQLite, and the statement became three round trips."""
    assert index.committer is not None
    index.committer.in_flight = in_flight
    for n in (1, 2):  # the series known, the statement prepared on the kept connection
        index.upsert_instance(_attrs(n), object_key=f"k/{n}", in_transaction=_audit(index, n),
                              **COMMON)
    assert index.committer is not None and len(index.committer._kept) == 1
    pgconn = index.committer._kept[0][0].connection.driver_connection.pgconn
    sent = _messages(pgconn, lambda: index.upsert_instance(
        _attrs(3), object_key="k/3", in_transaction=_audit(index, 3), **COMMON))
    assert [m.split()[0] for m in sent] == ["Bind", "Describe", "Execute", "Sync"], sent
    assert not any("BEGIN" in m or "COMMIT" in m for m in sent)
    statements = _Sent(monkeypatch)
    index.upsert_instance(_attrs(4), object_key="k/4", **COMMON)  # no audit row: the insert
    assert statements.sql == ["INSERT"]
    pooled = index.engine.raw_connection()
    try:
        assert pooled.driver_connection.autocommit is False  # type: ignore[union-attr]
    finally:
        pooled.close()
    with index.engine.connect() as conn:
        assert conn.execute(select(Instance.object_key).order_by(Instance.id)).scalars().all() \
            == ["k/1", "k/2", "k/3", "k/4"]
        studies = conn.execute(select(AuditEvent.studies).order_by(AuditEvent.id)).scalars()
        assert [s.strip() for s in studies] == ["n1", "n2", "n3"]


def _write_three(index: SqlIndex) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    table = AuditTable(index.engine)
    for n in range(3):
        entry = _audit_entry(n)
        index.upsert_instance(_attrs(n), object_key=f"k/{n}", **COMMON,
                              in_transaction=lambda conn, e=entry: table.write_in(conn, e))
    return (_columns(index, Instance, {"id", "received_at"}),
            _columns(index, AuditEvent, {"id", "event_time"}))


def test_the_one_statement_writes_the_rows_a_transaction_writes(
    index: SqlIndex, postgres_server: str,
) -> None:
    """The same instances and audit entries, once through the statement and once through
    transactions (group commit off): every column alike but ids and times of writing."""
    alone = _write_three(index)
    with database.fresh_database(postgres_server) as url:
        engine = create_index_engine(url)
        schema.upgrade(engine)
        try:
            in_transactions = _write_three(SqlIndex(engine, group_commit=False))
        finally:
            engine.dispose()
    assert alone == in_transactions
    assert len(alone[0]) == 3 and len(alone[1]) == 3


def test_a_refused_statement_leaves_no_connection_in_autocommit(
    index: SqlIndex,
) -> None:
    """A series row gone behind the cache's back (another process removed it) makes the
    statement fail its series check: nothing is written, the upsert runs again through the
    series look-up, and no connection in the pool or kept is left in autocommit."""
    index.upsert_instance(_attrs(1), object_key="k/1", in_transaction=_audit(index, 1), **COMMON)
    with index.engine.begin() as conn:
        conn.execute(text("DELETE FROM instances"))
        conn.execute(text("DELETE FROM series"))  # (the audit trail is append-only)
    index.upsert_instance(_attrs(2), object_key="k/2", in_transaction=_audit(index, 2), **COMMON)
    assert index.committer is not None
    for conn, _, _ in index.committer._kept:
        assert conn.connection.driver_connection.autocommit is False
    held = [index.engine.raw_connection() for _ in range(3)]
    try:
        assert all(c.driver_connection.autocommit is False for c in held)  # type: ignore[union-attr]
    finally:
        for c in held:
            c.close()
    assert [r["object_key"] for r in _columns(index, Instance, set())] == ["k/2"]
    assert [r["studies"].strip() for r in _columns(index, AuditEvent, set())] == ["n1", "n2"]


def test_a_statement_that_committed_and_lost_its_connection_is_kept_once(
    index: SqlIndex, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The statement commits, then its connection is lost before the answer comes back: it
    runs once more on a fresh connection, finds the SOP Instance UID taken, reads that the row
    is its own (its object key), and returns as stored; one instance row, one audit row."""
    index.upsert_instance(_attrs(1), object_key="k/1", in_transaction=_audit(index, 1), **COMMON)
    lost = _lose_first_statement(monkeypatch)
    replaced = index.upsert_instance(_attrs(2), object_key="k/2",
                                     in_transaction=_audit(index, 2), **COMMON)
    assert replaced is None and lost == [1]
    assert [r["object_key"] for r in _columns(index, Instance, set())] == ["k/1", "k/2"]
    assert [r["studies"].strip() for r in _columns(index, AuditEvent, set())] == ["n1", "n2"]


def test_a_known_sop_instance_is_replaced_in_a_transaction(
    index: SqlIndex, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The statement finds the SOP Instance UID taken by another object: nothing written by
    it; the transaction replaces the row and writes this C-STORE's audit row."""
    index.upsert_instance(_attrs(1), object_key="k/1", in_transaction=_audit(index, 1), **COMMON)
    sent = _Sent(monkeypatch)
    replaced = index.upsert_instance(_attrs(1), object_key="k/1b",
                                     in_transaction=_audit(index, 2), **COMMON)
    assert replaced == "k/1"
    assert sent.sql[0] == "WITH" and "COMMIT" in sent.sql
    assert [r["object_key"] for r in _columns(index, Instance, set())] == ["k/1b"]
    assert [r["studies"].strip() for r in _columns(index, AuditEvent, set())] == ["n1", "n2"]


def _c_store(n: int) -> Any:
    """A C-STORE request of instance ``n`` (one series for all), and its SOP Instance UID.
    Sent with an audit trail (``_trail``), an instance of a known series is the statement
    ``WITH new_instance AS (INSERT ...)``."""
    ds = pydicom.dcmread(ct_small())
    del ds.file_meta
    ds.SeriesInstanceUID = f"{PREFIX}1.0"
    ds.SOPInstanceUID = f"{PREFIX}2.{n}"
    return _event(ds), ds.SOPInstanceUID


def _lose_first_statement(monkeypatch: pytest.MonkeyPatch, meanwhile: Any = None) -> list[int]:
    """The next instance statement commits, then ``meanwhile()`` runs (another association's
    C-STORE), then its connection is lost before its answer comes back."""
    first = DriverStatement.first
    lost: list[int] = []

    def commits_then_loses(statement: DriverStatement, conn: Any, params: Any) -> Any:
        answer = first(statement, conn, params)
        if not lost and statement.sql.startswith("WITH"):
            lost.append(1)
            if meanwhile is not None:
                meanwhile()
            error = psycopg.OperationalError("server closed the connection unexpectedly")
            conn.invalidate()
            raise DBAPIError("WITH ...", None, error, connection_invalidated=True) from error
        return answer

    monkeypatch.setattr(DriverStatement, "first", commits_then_loses)
    return lost


def test_a_lost_statement_sent_again_never_replaces_a_newer_copy(
    index: SqlIndex, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """C-STORE A's statement commits and loses its connection; before it is sent again,
    C-STORE B of the same SOP Instance UID replaces A's row (and deletes A's object). Sent
    again, A's statement finds B's row: A must not take it for an older copy and replace it
    (that would delete B's object and point the row at A's deleted one). A is refused
    0xA700 with its outcome unknown; B's row and object stay."""
    store, trail = MemoryStore(), _trail(index)
    seed, _ = _c_store(1)
    assert _status(handle_store(seed, store, index, Policy("MIMIC"), trail)) == 0  # series known
    a, uid = _c_store(2)
    b, _ = _c_store(2)
    answers: dict[str, int] = {}

    def b_stores() -> None:
        answers["b"] = _status(handle_store(b, store, index, Policy("MIMIC"), trail))

    lost = _lose_first_statement(monkeypatch, meanwhile=b_stores)
    answers["a"] = _status(handle_store(a, store, index, Policy("MIMIC"), trail))
    assert lost == [1] and answers == {"a": 0xA700, "b": 0x0000}
    row = index.get_instance(uid)
    assert row is not None and row.object_key in store.objects  # B's, still there
    assert len(store.objects) == 2  # the seed's and B's (A's was deleted by B's replace)


@pytest.mark.parametrize("refused", ["reconnect", "read"])
def test_a_lost_statement_that_cannot_be_checked_keeps_its_object(
    index: SqlIndex, monkeypatch: pytest.MonkeyPatch, refused: str,
) -> None:
    """The statement commits and its connection is lost; then the database refuses new
    connections: at once (it cannot be sent again), or after it was sent again and found a
    row (whose row cannot be read). The C-STORE is refused 0xA700, but its row may have
    committed (here it did): its object is kept, never deleted under a committed row."""
    store, trail = MemoryStore(), _trail(index)
    seed, _ = _c_store(1)
    assert _status(handle_store(seed, store, index, Policy("MIMIC"), trail)) == 0
    connect = index.engine.connect
    connects: list[int] = []

    def refusing() -> Any:
        connects.append(1)
        if refused == "reconnect" or len(connects) > 1:
            error = psycopg.OperationalError("connection refused")
            raise OperationalError("connect", None, error) from error
        return connect()

    lost = _lose_first_statement(
        monkeypatch, meanwhile=lambda: monkeypatch.setattr(index.engine, "connect", refusing))
    event, uid = _c_store(2)
    assert _status(handle_store(event, store, index, Policy("MIMIC"), trail)) == 0xA700
    assert lost == [1] and connects
    monkeypatch.setattr(index.engine, "connect", connect)
    row = index.get_instance(uid)
    assert row is not None and row.object_key in store.objects


def test_a_statement_the_database_ended_is_not_an_unknown_outcome(
    index: SqlIndex, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server ends the session as the statement arrives and says so (a shutdown:
    ``57P01``), and then refuses new connections: the statement did not commit, so the
    C-STORE is refused 0xA700 and its object deleted, as when nothing was sent (no orphan)."""
    store, trail = MemoryStore(), _trail(index)
    seed, _ = _c_store(1)
    assert _status(handle_store(seed, store, index, Policy("MIMIC"), trail)) == 0
    first = DriverStatement.first

    def refusing() -> Any:
        error = psycopg.OperationalError("connection refused")
        raise OperationalError("connect", None, error) from error

    def ended(statement: DriverStatement, conn: Any, params: Any) -> Any:
        if not statement.sql.startswith("WITH"):
            return first(statement, conn, params)
        monkeypatch.setattr(index.engine, "connect", refusing)
        error = psycopg.errors.AdminShutdown("terminating connection due to administrator "
                                             "command")
        conn.invalidate()
        raise DBAPIError("WITH ...", None, error, connection_invalidated=True) from error

    monkeypatch.setattr(DriverStatement, "first", ended)
    event, uid = _c_store(2)
    assert _status(handle_store(event, store, index, Policy("MIMIC"), trail)) == 0xA700
    monkeypatch.undo()
    assert index.get_instance(uid) is None
    assert len(store.objects) == 1  # the seed's only
