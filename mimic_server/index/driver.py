"""Statements that every C-STORE runs, on the driver's own cursor (psycopg or sqlite3).

SQLAlchemy's execute path costs about 0.3 ms a statement here (cache key, parameter
processing, bind processors, the result object); a C-STORE runs one or two statements in its
index transaction, the new instance's insert and, where the audit trail is a table, its
audit row's. A :class:`DriverStatement` runs the very SQL text that SQLAlchemy compiles from
the same statement, once, on the driver's cursor (prepared on the server by psycopg; kept in
its statement cache by sqlite3), with the instance's header already JSON text
(``codec.dicom_json.json_text``, orjson: SQLAlchemy's JSON bind processor would run the
standard library's encoder, about 0.4 ms a CT header).

Parameters psycopg takes as they are (it adapts dates and passes text to a ``jsonb``
column for the server to parse). sqlite3 gets what SQLAlchemy's bind processors would have
given it (dates as SQLAlchemy's text form), but for the keys the caller passes already
encoded: so the row is the one SQLAlchemy's own execute writes
(``tests/unit/test_index.py``).

The transaction stays SQLAlchemy's: the statement runs on the connection of ``conn``, inside
its transaction, and a driver error goes through SQLAlchemy's own handling of driver errors
(``Connection._handle_dbapi_exception``, with no parameters: they hold patient data). So it
is raised as the SQLAlchemy error it would have been (``IntegrityError``,
``OperationalError``...), the ``handle_error`` events see it, and a lost connection
invalidates this connection and the pool's others (``connection_invalidated``), as after a
statement of SQLAlchemy's: the retries of ``engine.write_transaction`` and
``group_commit`` rely on that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.sql.base import Executable


class DriverStatement:
    """One statement compiled once by SQLAlchemy and run on the driver's cursor."""

    def __init__(self, engine: Engine, statement: Executable, keys: tuple[str, ...],
                 encoded: frozenset[str] = frozenset()) -> None:
        dialect = engine.dialect
        self._prepare = dialect.driver == "psycopg"
        self._processors: tuple[tuple[str, Callable[[Any], Any]], ...] = ()
        if dialect.name == "sqlite":
            # sqlite3 takes named parameters too: the same dict, whatever the order.
            dialect = type(dialect)(paramstyle="named")
            compiled = statement.compile(dialect=dialect, column_keys=list(keys))
            processors = []
            for name, bind in compiled.binds.items():
                if name in encoded:
                    continue
                process = bind.type.dialect_impl(dialect).bind_processor(dialect)
                if process is not None:
                    processors.append((name, process))
            self._processors = tuple(processors)
        else:
            compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        self.sql = compiled.string

    @classmethod
    def on(cls, engine: Engine, statement: Executable, keys: tuple[str, ...],
           encoded: frozenset[str] = frozenset()) -> DriverStatement | None:
        """The statement for ``engine``; None where its driver is neither psycopg nor
        sqlite3 (any other keeps SQLAlchemy's execute). ``encoded``: keys whose value the
        caller passes as the driver stores it (JSON text), past SQLAlchemy's processor."""
        dialect = engine.dialect
        if (dialect.name, dialect.driver) in (("postgresql", "psycopg"), ("sqlite", "pysqlite")):
            return cls(engine, statement, keys, encoded)
        return None

    def first(self, conn: Connection, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row the statement returns, or None."""
        return self._run(conn, params, fetch=True)

    def execute(self, conn: Connection, params: dict[str, Any]) -> None:
        """Run it for its effect (an insert without RETURNING)."""
        self._run(conn, params, fetch=False)

    def _run(self, conn: Connection, params: dict[str, Any],
             fetch: bool) -> tuple[Any, ...] | None:
        dbapi_connection = conn.connection.dbapi_connection
        assert dbapi_connection is not None
        if self._processors:
            params = dict(params)
            for name, process in self._processors:
                if name in params:
                    params[name] = process(params[name])
        cursor = dbapi_connection.cursor()
        try:
            if self._prepare:
                cursor.execute(self.sql, params, prepare=True)
            else:
                cursor.execute(self.sql, params)
            return cursor.fetchone() if fetch else None  # type: ignore[no-any-return]
        except conn.dialect.loaded_dbapi.Error as exc:
            # Raises the SQLAlchemy error; invalidates the connection (and the pool's
            # others) when it was lost. The parameters stay out of the message.
            conn._handle_dbapi_exception(exc, self.sql, None, cursor, None)
            raise  # not reached: the line above always raises
        finally:
            cursor.close()


class NotGathered(Exception):
    """A write that cannot be gathered into the instance's statement: the caller writes
    in a transaction instead."""


class Gathered:
    """What a C-STORE writes beside its instance row, gathered instead of written, so that
    the instance's insert can carry it in one statement (``repository.SqlIndex``).

    Passed where ``in_transaction`` expects a connection: a sink that knows it (the audit
    table, ``audit_table.AuditTable.write_in``) adds its row here; anything else that
    reaches for a connection's methods raises :class:`NotGathered`."""

    __slots__ = ("audit_rows",)

    def __init__(self) -> None:
        self.audit_rows: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        raise NotGathered(name)
