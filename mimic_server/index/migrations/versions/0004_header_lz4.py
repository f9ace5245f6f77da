"""Instance headers compressed with lz4 on PostgreSQL

Every C-STORE writes its header as DICOM JSON (about 12 KB of text for a CT slice) into
``instances.header``; PostgreSQL compresses a value that large before it stores it
(TOAST), by default with its own ``pglz``. With ``lz4`` the database spends about a fifth
less CPU on each C-STORE (measured with its audit row: 0.77 against 0.96 ms of backend CPU
per instance, docs/benchmarks.md) and reads a header back faster (a C-FIND or QIDO-RS that
answers from headers), for a value stored about 40 % larger (5.4 KB against 3.9 KB for a
CT slice's header).

Only values written from now on are compressed with lz4: rows already stored keep pglz and
read as before; nothing is rewritten. Where the column cannot be changed (a server built
without lz4; a role that does not own the table; the table's lock not granted within
``LOCK_TIMEOUT``) headers keep pglz: the migration says so, with the statement to run
later, and goes on. SQLite does not compress: nothing to do there.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy.exc import DBAPIError

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

log = logging.getLogger("mimic_server.index.migrations")

#: The statement, also for an operator to run later should the migration have to skip it.
LZ4 = "ALTER TABLE instances ALTER COLUMN header SET COMPRESSION lz4"
#: ``SET COMPRESSION`` takes the table's exclusive lock: on a live archive (a rolling update
#: runs ``mimic db upgrade`` while the previous revision still serves) it would queue behind
#: a long C-FIND page or ``mimic reconcile``'s cursor, and every C-STORE behind it. Bounded.
LOCK_TIMEOUT = "5s"


def upgrade() -> None:
    """New headers lz4; where the column cannot be changed in time, warn and go on."""
    if op.get_bind().dialect.name != "postgresql":
        return
    if _changed(LZ4):
        return
    log.warning("instance headers stay compressed with pglz (lz4 could not be set); "
                "to set it later, run: %s", LZ4)


def downgrade() -> None:
    """Back to the server's default (``default_toast_compression``, pglz unless changed);
    where the column cannot be changed, warn and go on, as the upgrade does."""
    if op.get_bind().dialect.name != "postgresql":
        return
    statement = "ALTER TABLE instances ALTER COLUMN header SET COMPRESSION DEFAULT"
    if not _changed(statement):
        log.warning("the compression of instance headers is left as it is")


def _changed(statement: str) -> bool:
    """Run ``statement`` with a bounded wait for its lock; False (and rolled back) when the
    server refuses it: no lz4 (built without it, or older than PostgreSQL 14), a role that
    does not own the table, the lock not granted within :data:`LOCK_TIMEOUT`."""
    bind = op.get_bind()
    before = bind.exec_driver_sql("SHOW lock_timeout").scalar_one()
    # A failed statement aborts the whole transaction: only rolling back to a savepoint taken
    # before it lets the migration go on (as in 0002).
    savepoint = bind.begin_nested()
    try:
        bind.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        bind.exec_driver_sql(statement)
    except DBAPIError as exc:
        savepoint.rollback()  # the SET LOCAL too
        reason = next(iter(str(exc.orig).splitlines()), "") or type(exc.orig).__name__
        log.warning("%s: %s", statement, reason)
        return False
    savepoint.commit()
    bind.exec_driver_sql("SELECT set_config('lock_timeout', %(v)s, true)", {"v": before})
    return True
