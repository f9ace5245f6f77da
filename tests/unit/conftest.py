from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mimic_server.index import schema
from mimic_server.index.engine import create_index_engine
from mimic_server.index.repository import SqlIndex
from tests import database
from tests.conftest import BACKENDS


@pytest.fixture(params=BACKENDS)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlIndex]:
    """An empty, migrated index for one test: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        engine = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
        schema.upgrade(engine)
        index = SqlIndex(engine)
        yield index
        index.close()
        engine.dispose()
        return
    with _postgresql_index(request.getfixturevalue("postgres_server")) as index:
        yield index


@pytest.fixture
def postgresql_index(postgres_server: str) -> Iterator[SqlIndex]:
    """An empty, migrated PostgreSQL index, for what only PostgreSQL shows: transactions
    side by side (SQLite has one writer at a time), the put beside the index transaction."""
    with _postgresql_index(postgres_server) as index:
        yield index


@contextmanager
def _postgresql_index(server: str) -> Iterator[SqlIndex]:
    with database.fresh_database(server) as url:
        engine = create_index_engine(url)
        schema.upgrade(engine)
        index = SqlIndex(engine)
        yield index
        index.close()
        engine.dispose()
