"""PostgreSQL for the tests: the server on 127.0.0.1:5432 when one answers, else our own.

Each test module gets a fresh, uniquely named database that is dropped afterwards. A private
cluster (initdb + pg_ctl from the installed PostgreSQL binaries, on a free loopback port) is
also what the outage tests stop and restart: the shared server on 5432 is never touched.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from tests.support import HOST, free_port, wait_for

SHARED = f"postgresql://postgres@{HOST}:5432/postgres"


def _bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (scripts/test.sh installs it)")
    return found


def reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _as_owner(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the 'postgres' system user then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


class PrivateCluster:
    """A throwaway PostgreSQL cluster owned by the test run."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mimic-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.data = self.dir / "data"
        user = ["-U", "postgres"]
        subprocess.run(_as_owner([_bin("initdb"), "-D", str(self.data), *user, "--auth=trust",
                                  "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses={HOST} -c fsync=off"
        subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-w",
                                  "-l", str(self.dir / "log"), "start"]),
                       check=True, capture_output=True)
        assert wait_for(lambda: reachable(self.url), timeout=30)

    def stop(self) -> None:
        subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                                  "stop"]), capture_output=True)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def server() -> Iterator[str]:
    """A PostgreSQL server URL (maintenance database) for the session."""
    if reachable(SHARED):
        yield SHARED
        return
    cluster = PrivateCluster()
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.remove()


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new database on ``server_url``; yields its SQLAlchemy URL; dropped afterwards."""
    name = f"mimic_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = server_url.rsplit("/", 1)[0]
    try:
        yield f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def role(server_url: str, url: str, *grants: str, limit: int = -1) -> Iterator[str]:
    """``url`` (a database of ``server_url``) as a new login role with ``grants`` (SQL, the
    role's name as ``{role}``) and at most ``limit`` connections at once (-1: no limit; a
    superuser, as the tests' ``postgres`` is, is never limited); yields the role's
    SQLAlchemy URL, drops the role afterwards."""
    name = f"mimic_role_{uuid.uuid4().hex[:8]}"
    admin = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{name}" LOGIN CONNECTION LIMIT {int(limit)}')
        for grant in grants:
            conn.execute(grant.format(role=f'"{name}"'))
    try:
        yield url.replace("://postgres@", f"://{name}@")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{name}"')
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def limited_role(server_url: str, url: str, limit: int) -> contextlib.AbstractContextManager[str]:
    """``url`` (migrated) as a role that may use its tables with at most ``limit``
    connections at once."""
    return role(server_url, url, "GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}",
                "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}", limit=limit)


@contextlib.contextmanager
def migrated_database(server_url: str) -> Iterator[str]:
    """A new database on ``server_url`` brought to the current schema by ``mimic db upgrade``
    (as an operator would), dropped afterwards; yields its SQLAlchemy URL."""
    import subprocess
    import sys

    with fresh_database(server_url) as url:
        upgraded = subprocess.run(
            [sys.executable, "-m", "mimic_server", "db", "upgrade", "--database-url", url],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "MIMIC_OPS_PORT": "0"},
        )
        assert upgraded.returncode == 0, upgraded.stderr
        yield url


def sqlite_index_at(path: Path, revision: str) -> None:
    """A SQLite index file at an older ``revision`` of the schema (migrated, then down)."""
    from alembic import command

    from mimic_server.index import schema
    from mimic_server.index.engine import create_index_engine

    engine = create_index_engine(f"sqlite:///{path}")
    try:
        schema.upgrade(engine)
        with engine.begin() as conn:
            config = schema._config()
            config.attributes["connection"] = conn
            command.downgrade(config, revision)
    finally:
        engine.dispose()


def emptied(engine: Any, index: Any) -> None:
    """A test index's rows deleted, its repository closed and its engine disposed."""
    with engine.begin() as conn:
        for table in ("instances", "series", "studies", "patients", "audit_events"):
            conn.exec_driver_sql(f"DELETE FROM {table}")
    index.close()
    engine.dispose()
