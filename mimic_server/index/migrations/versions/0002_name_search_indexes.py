"""Trigram indexes for case-insensitive name search on PostgreSQL

C-FIND on PatientName / ReferringPhysicianName becomes ``ILIKE '%literal%'`` (see
query/finder.py); on PostgreSQL a pg_trgm GIN index answers that without a table scan.
SQLite has no such index type: there the search scans, which is fine at embedded scale.
Where the extension cannot be created (a managed server that does not allow it), the
migration says so and goes on without the index.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy.exc import DBAPIError

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

log = logging.getLogger("mimic_server.index.migrations")

INDEXES = {
    "ix_patients_patient_name_trgm": ("patients", "patient_name"),
    "ix_studies_referring_physician_name_trgm": ("studies", "referring_physician_name"),
}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    # A failed statement aborts the whole transaction on PostgreSQL: only rolling back to a
    # savepoint taken before it lets the migration go on (leaving the block normally would
    # release the savepoint, which PostgreSQL refuses in an aborted transaction).
    savepoint = bind.begin_nested()
    try:
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DBAPIError:
        savepoint.rollback()
        log.warning("pg_trgm is not available: name searches will scan")
        return
    savepoint.commit()
    for name, (table, column) in INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin ({column} gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
