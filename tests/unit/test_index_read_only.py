"""The readiness check of the index refuses a database that answers but takes no writes.

A PostgreSQL that is read-only (a hot standby; ``default_transaction_read_only``, which Azure
Database for PostgreSQL turns on when its storage is nearly full) answers ``SELECT 1``, while
every C-STORE is refused 0xA700: ``/readyz`` must not say ready then.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from mimic_server.backends import index_answers
from mimic_server.errors import OutOfResources
from mimic_server.index.engine import create_index_engine
from tests import database


def test_a_read_only_postgresql_index_is_not_ready(postgres_server: str) -> None:
    with database.fresh_database(postgres_server) as url:
        engine = create_index_engine(url)
        try:
            assert index_answers(engine) == "postgresql answers"
            name = url.rsplit("/", 1)[1]
            with psycopg.connect(postgres_server, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            engine.dispose()  # the setting applies to new sessions
            with pytest.raises(OutOfResources, match="read-only"):
                index_answers(engine)
        finally:
            engine.dispose()


def test_a_sqlite_index_answers(tmp_path: Path) -> None:
    engine = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    try:
        assert index_answers(engine) == "sqlite answers"
    finally:
        engine.dispose()
