"""Statements that every C-STORE runs, on psycopg's own cursor (PostgreSQL).

SQLAlchemy's execute path costs about 0.3 ms a statement here (cache key, parameter
processing, bind processors, the result object); a C-STORE of the PostgreSQL configuration
runs two statements in its index transaction, the new instance's insert and its audit row's.
A :class:`DriverStatement` runs the very SQL text that SQLAlchemy compiles from the same
statement, once, on the driver's cursor, prepared on the server, with parameters the driver
takes as they are (the instance's header as JSON text, ``codec.dicom_json.json_text``).

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

from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.sql.dml import Insert


class DriverStatement:
    """One statement compiled once by SQLAlchemy and run on psycopg's cursor, prepared."""

    def __init__(self, engine: Engine, statement: Insert, keys: tuple[str, ...]) -> None:
        self.sql = statement.compile(dialect=engine.dialect, column_keys=list(keys)).string

    @classmethod
    def on(cls, engine: Engine, statement: Insert,
           keys: tuple[str, ...]) -> DriverStatement | None:
        """The statement for ``engine``; None where its driver is not psycopg (SQLite and
        any other driver keep SQLAlchemy's execute)."""
        if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
            return cls(engine, statement, keys)
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
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(self.sql, params, prepare=True)
            return cursor.fetchone() if fetch else None  # type: ignore[no-any-return]
        except conn.dialect.loaded_dbapi.Error as exc:
            # Raises the SQLAlchemy error; invalidates the connection (and the pool's
            # others) when it was lost. The parameters stay out of the message.
            conn._handle_dbapi_exception(exc, self.sql, None, cursor, None)
            raise  # not reached: the line above always raises
        finally:
            cursor.close()
