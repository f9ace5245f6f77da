"""The index schema's migration on SQLite (``index/schema.upgrade``), as ``mimic serve``,
``mimic web`` and ``mimic db upgrade`` run it at start: it waits for another writer within
the busy timeout, and processes that start at once on one file all go on."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import event

from mimic_server.index import schema
from mimic_server.index.engine import create_index_engine
from tests.database import sqlite_index_at


def _revision(path: Path) -> str | None:
    engine = create_index_engine(f"sqlite:///{path}")
    try:
        return schema.current_revision(engine)
    finally:
        engine.dispose()


def test_a_pending_migration_waits_for_another_writer(tmp_path: Path) -> None:
    """Another process holds SQLite's write lock (a server storing, an operator's
    ``sqlite3`` shell): the migration waits for it, then applies. It failed at once with
    "database is locked" (exit 2) despite the busy timeout."""
    path = tmp_path / "index.sqlite3"
    sqlite_index_at(path, "0003")
    engine = create_index_engine(f"sqlite:///{path}")
    began = threading.Event()

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement == "BEGIN IMMEDIATE":
            began.set()

    event.listen(engine, "before_cursor_execute", seen)
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            schema.upgrade(engine)
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    outsider = sqlite3.connect(path, isolation_level=None)
    outsider.execute("BEGIN IMMEDIATE")
    thread = threading.Thread(target=migrate, daemon=True)
    try:
        thread.start()
        while thread.is_alive() and not began.wait(0.01):
            pass  # until the migration waits on the write lock, or has failed
    finally:
        outsider.rollback()
        outsider.close()
    thread.join(60)
    engine.dispose()
    assert errors == []
    assert _revision(path) == schema.head_revision()


def test_migrations_started_at_once_on_an_empty_file_all_go_on(tmp_path: Path) -> None:
    """Three starts at once on an empty data directory: one migrates, the others find the
    schema current. Two of three failed with "database is locked"."""
    path = tmp_path / "index.sqlite3"
    engines = [create_index_engine(f"sqlite:///{path}") for _ in range(3)]
    start = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def migrate(n: int) -> None:
        start.wait()
        try:
            schema.upgrade(engines[n])
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(n,)) for n in range(len(engines))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for engine in engines:
        engine.dispose()
    assert errors == []
    assert _revision(path) == schema.head_revision()


def test_upgrades_started_at_once_on_an_empty_postgresql_database_all_go_on(
        postgres_server: str) -> None:
    """Replicas started together on an empty database (``azd up``): each migration waits
    for the one before it and then finds the schema current. Without the advisory lock
    both created the version table and one failed on the catalog's unique index."""
    from tests import database

    with database.fresh_database(postgres_server) as url:
        engines = [create_index_engine(url) for _ in range(4)]
        start = threading.Barrier(len(engines))
        errors: list[BaseException] = []

        def migrate(engine: Any) -> None:
            start.wait()
            try:
                schema.upgrade(engine)
            except BaseException as exc:  # handed to the test
                errors.append(exc)

        threads = [threading.Thread(target=migrate, args=(e,)) for e in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        try:
            assert errors == []
            assert schema.current_revision(engines[0]) == schema.head_revision()
        finally:
            for engine in engines:
                engine.dispose()
