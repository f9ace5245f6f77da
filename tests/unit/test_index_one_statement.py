"""PostgreSQL's new instance of a known series: one statement that commits itself
(``repository.SqlIndex._alone``, ``group_commit.GroupCommitter._commit_alone``).

Checked against the real server: the statement is all that is sent (no BEGIN, no COMMIT of a
transaction), its instance row and audit row are the ones the transaction path writes, a
refused statement leaves no connection in autocommit behind, a statement whose connection was
lost after it committed is found to be its own row (once, with one audit row), and a known SOP
Instance UID is still replaced in a transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from mimic_server.index import schema
from mimic_server.index.audit_table import AuditTable
from mimic_server.index.driver import DriverStatement
from mimic_server.index.engine import create_index_engine
from mimic_server.index.models import AuditEvent, Instance
from mimic_server.index.repository import SqlIndex
from tests import database
from tests.unit.test_group_commit import COMMON, _attrs, _audit_entry

pytestmark = pytest.mark.postgres


@pytest.fixture
def index(postgres_server: str) -> Iterator[SqlIndex]:
    with database.fresh_database(postgres_server) as url:
        engine = create_index_engine(url)
        schema.upgrade(engine)
        index = SqlIndex(engine)
        yield index
        index.close()
        engine.dispose()


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


def test_a_new_instance_of_a_known_series_is_one_statement(
    index: SqlIndex, monkeypatch: pytest.MonkeyPatch,
) -> None:
    index.upsert_instance(_attrs(1), object_key="k/1", in_transaction=_audit(index, 1), **COMMON)
    sent = _Sent(monkeypatch)
    index.upsert_instance(_attrs(2), object_key="k/2", in_transaction=_audit(index, 2), **COMMON)
    assert sent.sql == ["WITH"]  # the insert with its audit row; no BEGIN, no COMMIT
    index.upsert_instance(_attrs(3), object_key="k/3", **COMMON)  # no audit row: the insert
    assert sent.sql == ["WITH", "INSERT"]
    pooled = index.engine.raw_connection()
    try:
        assert pooled.driver_connection.autocommit is False  # type: ignore[union-attr]
    finally:
        pooled.close()
    with index.engine.connect() as conn:
        assert conn.execute(select(Instance.object_key).order_by(Instance.id)).scalars().all() \
            == ["k/1", "k/2", "k/3"]
        studies = conn.execute(select(AuditEvent.studies).order_by(AuditEvent.id)).scalars()
        assert [s.strip() for s in studies] == ["n1", "n2"]


def test_the_one_statement_writes_the_rows_a_transaction_writes(postgres_server: str) -> None:
    """The same instances and audit entries, once through the statement and once through
    transactions (group commit off): every column alike but ids and times of writing."""
    written = []
    for group_commit in (True, False):
        with database.fresh_database(postgres_server) as url:
            engine = create_index_engine(url)
            schema.upgrade(engine)
            index = SqlIndex(engine, group_commit=group_commit)
            entries = [_audit_entry(n) for n in range(3)]
            table = AuditTable(engine)
            for n, entry in enumerate(entries):
                index.upsert_instance(
                    _attrs(n), object_key=f"k/{n}", **COMMON,
                    in_transaction=lambda conn, e=entry, t=table: t.write_in(conn, e))
            instances = _columns(index, Instance, {"id", "received_at"})
            audit = _columns(index, AuditEvent, {"id", "event_time"})
            written.append((instances, audit))
            index.close()
            engine.dispose()
    assert written[0] == written[1]
    assert len(written[0][0]) == 3 and len(written[0][1]) == 3


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
    first = DriverStatement.first
    lost: list[int] = []

    def commits_then_loses(statement: DriverStatement, conn: Any, params: Any) -> Any:
        answer = first(statement, conn, params)
        if not lost and statement.sql.startswith("WITH"):
            lost.append(1)
            error = psycopg.OperationalError("server closed the connection unexpectedly")
            conn.invalidate()
            raise DBAPIError("WITH ...", None, error, connection_invalidated=True) from error
        return answer

    monkeypatch.setattr(DriverStatement, "first", commits_then_loses)
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
