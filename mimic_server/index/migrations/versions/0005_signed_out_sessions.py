"""Console sessions signed out, for every replica to see

``signed_out_sessions`` holds the id of each console session signed out before its expiry
and that expiry (Unix seconds, as the session cookie carries it). Console sessions are
signed cookies; the replicas of ``mimic web`` share the signing key and the index, nothing
else, so a sign-out recorded only in the replica that took it left the cookie valid on the
others until it expired (8 h by default). Each session check reads this table (its primary
key); rows past their expiry are deleted at the next sign-out (``expires`` is indexed).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signed_out_sessions",
        sa.Column("session_id", sa.String(length=128), nullable=False),
        sa.Column("expires", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_signed_out_sessions")),
    )
    op.create_index(op.f("ix_signed_out_sessions_expires"), "signed_out_sessions",
                    ["expires"])


def downgrade() -> None:
    op.drop_index(op.f("ix_signed_out_sessions_expires"), table_name="signed_out_sessions")
    op.drop_table("signed_out_sessions")
