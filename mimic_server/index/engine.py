"""One SQLAlchemy engine per process, tuned per dialect.

SQLite: WAL (readers never wait for the writer), ``synchronous=FULL`` (a committed row survives
power loss: we acknowledge C-STORE only after the commit), and write transactions opened with
``BEGIN IMMEDIATE`` so that two writers queue on the busy timeout instead of failing to
upgrade a read lock.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event

WRITE = {"mimic_write": True}


def create_index_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=24,
        )
        _tune_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=24)


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("mimic_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
