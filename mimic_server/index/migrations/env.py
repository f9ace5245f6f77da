"""Alembic environment: always driven programmatically by :mod:`mimic_server.index.schema`."""

from __future__ import annotations

from alembic import context

from mimic_server.index.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
