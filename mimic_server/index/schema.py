"""Schema migrations (Alembic) run from code: ``mimic db upgrade`` and the start-up check.

Alembic is imported by the functions that use it: a worker process of ``mimic serve`` only
checks the revision its supervisor prepared (:func:`require_revision`, one query), and does
not pay for importing Alembic and reading the migration scripts at every start.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text

from mimic_server.errors import ConfigurationError
from mimic_server.index.engine import WRITE

if TYPE_CHECKING:
    from alembic.config import Config

_SCRIPTS = Path(__file__).parent / "migrations"


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


#: The PostgreSQL advisory lock the migrations hold ("MIMIC" in ASCII): one upgrade at a time.
MIGRATION_LOCK = 0x4D494D4943


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision this code knows.

    In a write transaction of the engine's (``engine.WRITE``): on SQLite the writers' flock,
    then ``BEGIN IMMEDIATE``, which waits out another writer within the busy timeout. A
    deferred transaction read the revision first and then failed its first write at once
    with "database is locked" (SQLite calls no busy handler to upgrade a read transaction).
    Alembic reads the revision inside the transaction, after the lock: of several processes
    that start at once on one file, the first migrates and the others find it current."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    if current_revision(engine) == head_revision():
        return  # current: read only, no writer's lock (a report on a read-only copy)
    config = _config()
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            # The same on PostgreSQL, whose transaction takes no lock before its first DDL:
            # two replicas started at once on an empty database both created the version
            # table, and one exited 2 on the catalog's unique index. Released at commit.
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        _require_known(MigrationContext.configure(conn).get_current_revision())
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def require_current(engine: Engine) -> None:
    """Refuse to serve on a schema older (or newer) than this code was written for."""
    current = current_revision(engine)
    _require_known(current)
    _require(current, head_revision())


def _require_known(current: str | None) -> None:
    """A revision this code has no script for is a newer MIMIC's (the image was rolled
    back): 'mimic db upgrade', which the operator was told to run, then failed in turn
    ("Can't locate revision"). The way on is a newer MIMIC, or that MIMIC's downgrade."""
    from alembic.script import ScriptDirectory

    if current is None:
        return
    script = ScriptDirectory.from_config(_config())
    if current not in {revision.revision for revision in script.walk_revisions()}:
        raise ConfigurationError(
            f"the index is at revision {current}, newer than this version of MIMIC knows "
            f"({script.get_current_head()}): run a newer MIMIC"
        )


def require_revision(engine: Engine, revision: str) -> None:
    """Refuse to serve on a schema other than ``revision``, the one a supervisor upgraded
    to or checked; read without Alembic (its version table has one row)."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    _require(rows[0][0] if len(rows) == 1 else None, revision)


def _require(current: str | None, needed: str | None) -> None:
    if current != needed:
        raise ConfigurationError(
            f"index schema is at revision {current or 'none'}, this server needs {needed}: "
            "run 'mimic db upgrade'"
        )
