"""What ``mimic serve``, ``mimic web``, ``mimic db upgrade`` and ``mimic audit`` say when the
index cannot be used: exit 2 and the one ``mimic:`` line the operator guide promises (the
driver's error class and the first line of its message), never SQLAlchemy's text of the
error (the SQL, ``[SQL: ...]``, the "Background on this error" link) or a traceback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mimic_server.index import schema
from mimic_server.index.engine import create_index_engine
from tests.database import sqlite_index_at
from tests.support import HOST, free_port


def mimic(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MIMIC_")}
    clean.update({"MIMIC_OPS_PORT": "0", "MIMIC_PORT": "0", "MIMIC_WEB_PORT": "0",
                  "MIMIC_HOST": HOST, "MIMIC_WORKERS": "1", "MIMIC_WEB_WORKERS": "1",
                  "MIMIC_WEB_AUTH": "none"})
    return subprocess.run(
        [sys.executable, "-m", "mimic_server", *args],
        capture_output=True, text=True, timeout=60, env={**clean, **(env or {})},
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, result.stderr  # JSON log lines aside
    assert lines[0].startswith("mimic: ")
    for noise in ("Traceback", "[SQL", "sqlalche.me", "Background on this error"):
        assert noise not in result.stderr
    return lines[0]


@pytest.mark.parametrize("args", [("serve",), ("web",), ("db", "upgrade")])
def test_an_index_newer_than_the_code_says_run_a_newer_mimic(
        tmp_path: Path, args: tuple[str, ...]) -> None:
    """The image rolled back under a migrated index: it said "run 'mimic db upgrade'",
    which then failed "Can't locate revision"."""
    engine = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    schema.upgrade(engine)
    engine.dispose()
    with sqlite3.connect(tmp_path / "index.sqlite3") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    line = _one_line(mimic(*args, "--data-dir", str(tmp_path)))
    assert line == (f"mimic: the index is at revision 9999, newer than this version of MIMIC "
                    f"knows ({schema.head_revision()}): run a newer MIMIC")


def test_a_failed_migration_is_one_line(tmp_path: Path) -> None:
    """A migration that fails on a statement: the driver's class and first line."""
    sqlite_index_at(tmp_path / "index.sqlite3", "0003")
    url = f"sqlite:///file:{tmp_path / 'index.sqlite3'}?mode=ro&uri=true"
    line = _one_line(mimic("db", "upgrade", "--data-dir", str(tmp_path), "--database-url", url))
    assert line == ("mimic: migration failed: OperationalError (SQLITE_READONLY): "
                    "attempt to write a readonly database")


@pytest.mark.parametrize(("args", "said"), [
    (("serve",), "mimic: index database unusable: OperationalError: "),
    (("db", "upgrade"), "mimic: migration failed: OperationalError: "),
    (("audit",), "mimic: audit table unreadable: OperationalError: "),
])
def test_a_database_that_refuses_the_connection_is_one_line(
        tmp_path: Path, args: tuple[str, ...], said: str) -> None:
    url = f"postgresql+psycopg://mimic@{HOST}:{free_port()}/mimic"
    line = _one_line(mimic(*args, "--data-dir", str(tmp_path), env={"MIMIC_DATABASE_URL": url}))
    assert line.startswith(said) and "refused" in line


@pytest.mark.parametrize("args", [("serve",), ("db", "upgrade"), ("audit",)])
@pytest.mark.parametrize(("url", "said"), [
    # Not taken as PostgreSQL behind the operator's back: the line says what to write.
    ("postgres://u:TAILSECRET@127.0.0.1:1/x",
     "mimic: index database URL names a database SQLAlchemy does not know ('postgres'): "
     "PostgreSQL is postgresql+psycopg://"),
    ("mssql+pyodbc://u:TAILSECRET@127.0.0.1:1/x",
     "mimic: index database URL names a database MIMIC has no driver for (PostgreSQL or "
     "SQLite): PostgreSQL is postgresql+psycopg://"),
], ids=["unknown-dialect", "no-driver"])
def test_a_url_whose_dialect_or_driver_is_missing_is_one_line(
        tmp_path: Path, args: tuple[str, ...], url: str, said: str) -> None:
    """``db upgrade`` and ``audit`` crashed with a traceback (exit 1) where ``serve`` said
    one line."""
    result = mimic(*args, "--data-dir", str(tmp_path), env={"MIMIC_DATABASE_URL": url})
    assert _one_line(result) == said
    assert "TAILSECRET" not in result.stderr
