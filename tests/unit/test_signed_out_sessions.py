"""Signed-out console sessions in the index (``index/signed_out.py``, migration 0005), read
by the cookie signer of each replica (``web/console/sessions.Signer``), on SQLite and on
PostgreSQL: what one replica signs out the other refuses at its next check, a "signed
out" answer is kept until the session's expiry, expired rows go at the next sign-out, an
index that cannot answer refuses the session, and the migration comes on an existing
index (and `mimic web` refuses one that has not had it, on PostgreSQL)."""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, text

from mimic_server.config import Settings
from mimic_server.index import schema
from mimic_server.index.engine import create_index_engine
from mimic_server.index.signed_out import SignedOutSessions
from mimic_server.web.console.sessions import SessionsUnavailable, Signer
from tests import database
from tests.support import HOST, free_port
from tests.test_cli import _one_line, mimic

KEY = "k" * 40


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    made = create_index_engine(database_url)
    yield made
    with made.begin() as conn:
        conn.execute(text("DELETE FROM signed_out_sessions"))
    made.dispose()


class Counted(SignedOutSessions):
    """The real store, its lookups counted."""

    def __init__(self, engine: Engine, **kwargs: object) -> None:
        super().__init__(engine, **kwargs)  # type: ignore[arg-type]
        self.lookups = 0

    def holds(self, session_id: str) -> bool:
        self.lookups += 1
        return super().holds(session_id)


def _sid() -> str:
    return secrets.token_urlsafe(16)


def _cookie(signer: Signer, sid: str, lifetime: float = 600) -> str:
    return signer.seal("session", {"sub": "operator-1", "sid": sid}, lifetime)


def test_a_sign_out_in_one_replica_is_refused_by_the_other(engine: Engine) -> None:
    """No directory in common: the replicas share the key and the index alone."""
    one, other = Signer(KEY, signed_out=SignedOutSessions(engine)), \
        Signer(KEY, signed_out=Counted(engine))
    sid = _sid()
    cookie = _cookie(one, sid)
    # "Not signed out" is not remembered: a later sign-out is seen at the next check.
    assert other.open("session", cookie) is not None
    assert other.open("session", cookie) is not None
    assert one.revoke(sid, time.time() + 600) is True
    assert other.open("session", cookie) is None
    assert one.open("session", cookie) is None
    assert one.revoke(sid, time.time() + 600) is False  # already: not recorded twice
    # Another session of the same user stays.
    assert other.open("session", _cookie(one, _sid())) is not None


def test_a_signed_out_answer_is_kept_until_the_session_expires(engine: Engine) -> None:
    store = Counted(engine)
    one, other = Signer(KEY, signed_out=SignedOutSessions(engine)), Signer(KEY, signed_out=store)
    sid = _sid()
    cookie = _cookie(one, sid)
    one.revoke(sid, time.time() + 600)
    assert other.open("session", cookie) is None
    assert store.lookups == 1
    for _ in range(3):
        assert other.open("session", cookie) is None
    assert store.lookups == 1
    # The check that opens the session without it (a sign-out made again) asks nothing.
    assert other.open("session", cookie, check_revoked=False) is not None
    assert store.lookups == 1


def test_expired_rows_are_deleted_by_the_next_sign_out(engine: Engine) -> None:
    now = [1_900_000_000.0]
    store = SignedOutSessions(engine, clock=lambda: now[0])
    signer = Signer(KEY, clock=lambda: now[0], signed_out=store)
    first, second, third = _sid(), _sid(), _sid()
    signer.revoke(first, now[0] + 60)
    signer.revoke(second, now[0] + 3600)
    now[0] += 61
    signer.revoke(third, now[0] + 3600)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT session_id FROM signed_out_sessions")).scalars().all()
    assert sorted(rows) == sorted([second, third])


def test_an_index_that_cannot_answer_refuses_the_session() -> None:
    """PostgreSQL down (nothing listens): the check raises, never answers "not signed
    out"; a sign-out still ends the session in this process and says it was not recorded."""
    down = create_index_engine(f"postgresql+psycopg://mimic@{HOST}:{free_port()}/mimic")
    try:
        signer = Signer(KEY, signed_out=SignedOutSessions(down))
        sid = _sid()
        cookie = _cookie(signer, sid)
        with pytest.raises(SessionsUnavailable, match="index database does not answer"):
            signer.open("session", cookie)
        assert signer.open("login", signer.seal("login", {}, 60)) is not None  # no session id
        with pytest.raises(SessionsUnavailable):
            signer.revoke(sid, time.time() + 600)
        assert signer.open("session", cookie) is None  # known here now, no index needed
    finally:
        down.dispose()


def test_the_migration_comes_on_an_existing_sqlite_index(tmp_path: Path) -> None:
    """An embedded archive of the previous revision: `mimic web` (as `mimic serve`)
    migrates its index at start, the rows it holds kept; the downgrade takes the table."""
    path = tmp_path / "index.sqlite3"
    database.sqlite_index_at(path, "0004")
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO patients (id, patient_key, patient_id, issuer_of_patient_id,"
                     " patient_name, patient_birth_date, patient_sex, created_at) VALUES "
                     "(1, 'k', 'p', '', 'n', '', '', '2026-01-01 00:00:00')")
    from mimic_server.backends import open_index_engine

    engine = open_index_engine(Settings(data_dir=tmp_path))
    try:
        assert schema.current_revision(engine) == schema.head_revision() == "0005"
        assert "signed_out_sessions" in inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM patients")).scalar_one() == 1
        signer = Signer(KEY, signed_out=SignedOutSessions(engine))
        sid = _sid()
        signer.revoke(sid, time.time() + 600)
        assert Signer(KEY, signed_out=SignedOutSessions(engine)).open(
            "session", _cookie(signer, sid)) is None
        with engine.begin() as conn:
            config = schema._config()
            config.attributes["connection"] = conn
            command.downgrade(config, "0004")
        assert "signed_out_sessions" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_mimic_web_refuses_a_postgresql_index_without_the_migration(
        postgres_server: str, tmp_path: Path) -> None:
    """PostgreSQL is migrated by `mimic db upgrade`, not by a server's start: `mimic web`
    on an index of revision 0004 says so and stops; upgraded, the table is there."""
    with database.fresh_database(postgres_server) as url:
        engine = create_index_engine(url)
        try:
            with engine.begin() as conn:
                config = schema._config()
                config.attributes["connection"] = conn
                command.upgrade(config, "0004")
            env = {"MIMIC_DATABASE_URL": url, "MIMIC_WEB_AUTH": "none", "MIMIC_WEB_HOST": HOST}
            line = _one_line(mimic("web", "--data-dir", str(tmp_path / "data"), env=env))
            assert line == ("mimic: index schema is at revision 0004, this server needs "
                            f"{schema.head_revision()}: run 'mimic db upgrade'")
            upgraded = mimic("db", "upgrade", "--data-dir", str(tmp_path / "data"), env=env)
            assert upgraded.returncode == 0, upgraded.stderr
            assert schema.current_revision(engine) == schema.head_revision()
            assert "signed_out_sessions" in inspect(engine).get_table_names()
        finally:
            engine.dispose()
