"""The audit trail in the index database: the append-only ``audit_events`` table.

In the PostgreSQL configuration this is where audit messages go (``app.py`` composes it):
a replica's disk is temporary, the database is not. Most records are written in their own
short transaction when the work they record is done (a login, a C-FIND when it is
answered): the caller goes on if the write fails (it is logged and counted by
:class:`~mimic_server.security.audit.AuditLog`). ``write_in`` writes into a transaction the
caller already has, for work whose audit row commits with it: each C-STORE's DICOM Instances
Transferred goes into the transaction that indexes the instance.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, func, insert, select

from mimic_server.index.driver import DriverStatement, Gathered
from mimic_server.index.engine import read_index, write_transaction
from mimic_server.index.models import AuditEvent


class AuditEntry(Protocol):
    """What the table keeps of ``security.audit_records.AuditEntry`` (the index does not
    import the security room)."""

    when: datetime
    event_code: str
    event_type: str | None
    outcome: int
    identity: str | None
    trust_name: str | None
    calling_ae: str | None
    user: str | None
    studies: tuple[str, ...]
    xml: str


def _row(entry: AuditEntry) -> dict[str, Any]:
    return {
        "event_time": entry.when, "event_code": entry.event_code,
        "event_type": entry.event_type, "outcome": entry.outcome,
        "identity": _cut(entry.identity, 400), "trust_name": _cut(entry.trust_name, 400),
        "calling_ae": _cut(entry.calling_ae, 16), "user_name": _cut(entry.user, 400),
        "studies": " " + " ".join(entry.studies) + " " if entry.studies else "",
        "xml": entry.xml,
    }


_INSERT = insert(AuditEvent)
#: The columns ``_row`` fills, in its order.
KEYS = ("event_time", "event_code", "event_type", "outcome", "identity", "trust_name",
         "calling_ae", "user_name", "studies", "xml")


def _cut(value: str | None, limit: int) -> str | None:
    return value[:limit] if value is not None else None


class AuditTable:
    """An audit sink that inserts one row per record."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: PostgreSQL (psycopg): the insert of ``write_in`` on the driver's cursor, prepared.
        self._driver_insert = DriverStatement.on(engine, _INSERT, KEYS)

    def write(self, entry: AuditEntry, details: dict[str, Any]) -> None:
        """In a transaction of its own (run once more if a stale pooled connection was lost
        before the commit: ``engine.write_transaction``)."""
        write_transaction(self.engine, lambda conn: self.write_in(conn, entry))

    def write_batch(self, entries: list[AuditEntry]) -> None:
        """Several records in one transaction (one commit: ``security.audit.GroupCommitSink``)."""
        rows = [_row(entry) for entry in entries]
        write_transaction(self.engine, lambda conn: conn.execute(_INSERT, rows))

    def write_in(self, conn: Connection, entry: AuditEntry) -> None:
        """Into the caller's transaction (a C-STORE's, with its instance row). One statement
        with parameters, compiled once; on PostgreSQL run on psycopg's cursor as the
        instance's insert is (``driver.DriverStatement``): SQLAlchemy's execute path was
        about 0.3 ms of every C-STORE (docs/benchmarks.md). Errors are SQLAlchemy's either
        way: the transaction rolls back, and its retry writes the row once.

        Given :class:`~mimic_server.index.driver.Gathered` instead of a connection, the row
        is added to it, for the instance's insert to write in the same statement."""
        if isinstance(conn, Gathered):
            conn.audit_rows.append(_row(entry))
        elif self._driver_insert is not None:
            self._driver_insert.execute(conn, _row(entry))
        else:
            conn.execute(_INSERT, _row(entry))

    def close(self) -> None:
        """The engine belongs to the index; nothing to close here."""


def read_table(engine: Engine, since: datetime | None = None,
               study: str | None = None) -> list[dict[str, Any]]:
    """The rows from ``since`` that name ``study``, oldest first, with the same fields as
    the file's lines (``mimic audit`` filters the rest)."""
    query = select(AuditEvent.__table__).order_by(AuditEvent.id)
    if since is not None:
        query = query.where(AuditEvent.event_time >= since.astimezone(UTC))
    if study is not None:
        query = query.where(AuditEvent.studies.contains(f" {study} ", autoescape=True))
    found = []
    for row in read_index(engine, lambda conn: conn.execute(query).all()):
        fields = {
            "time": _aware(row.event_time).isoformat(), "event": row.event_code,
            "event_name": _name(row.xml), "event_type": row.event_type,
            "outcome": row.outcome, "identity": row.identity, "trust_name": row.trust_name,
            "calling_ae": row.calling_ae, "user": row.user_name,
            "studies": row.studies.split(), "xml": row.xml,
        }
        found.append(fields)
    return found


#: Characters of a message that hold its EventID (the event's name): the head of the
#: ``<EventIdentification>`` element, not the participants and objects after it.
_HEAD = 512


def read_table_newest(engine: Engine, matches: Callable[[dict[str, Any]], bool],
                      limit: int | None, since: datetime | None = None,
                      study: str | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` rows (None: all) that ``matches`` takes, newest first, without
    their message: the rows come newest first in batches, and the read stops at ``limit``.
    The console's audit page read every row with its XML into memory to keep 500 (255 MiB
    for a 200 MiB trail, per click); only the first characters of each message are read
    here, for the event's name."""
    columns = [c for c in AuditEvent.__table__.c if c.name != "xml"]
    query = select(*columns, func.substr(AuditEvent.xml, 1, _HEAD).label("head")) \
        .order_by(AuditEvent.id.desc())
    if since is not None:
        query = query.where(AuditEvent.event_time >= since.astimezone(UTC))
    if study is not None:
        query = query.where(AuditEvent.studies.contains(f" {study} ", autoescape=True))

    def newest(conn: Connection) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for row in conn.execution_options(yield_per=500).execute(query):
            fields = {
                "time": _aware(row.event_time).isoformat(), "event": row.event_code,
                "event_name": _name(row.head), "event_type": row.event_type,
                "outcome": row.outcome, "identity": row.identity,
                "trust_name": row.trust_name, "calling_ae": row.calling_ae,
                "user": row.user_name, "studies": row.studies.split(),
            }
            if matches(fields):
                found.append(fields)
                if limit is not None and len(found) >= limit:
                    break
        return found

    return read_index(engine, newest)


def _aware(when: datetime) -> datetime:
    """SQLite hands back naive times; they were written in UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _name(xml: str) -> str:
    """The event's meaning (originalText of EventID), read back from the message."""
    marker = 'originalText="'
    start = xml.find(marker, xml.find("<EventID"))
    return xml[start + len(marker): xml.find('"', start + len(marker))] if start >= 0 else ""
