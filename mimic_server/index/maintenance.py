"""Index queries for maintenance (``mimic reconcile``), kept apart from the hot-path repository.

Every change is conditional on what reconcile saw: an instance row is removed only if it still
points at the object found missing or corrupt, so a C-STORE that switched the row to new
bytes in the meantime is never undone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Connection, Engine, delete, exists, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from mimic_server.errors import OutOfResources
from mimic_server.index.engine import WRITE, read_index
from mimic_server.index.models import Instance, Patient, Series, Study
from mimic_server.index.prune import prune_empty_parents, prune_empty_patient, prune_empty_study

__all__ = ["EmptyRow", "ObjectRef", "empty_rows", "object_refs", "refers_to",
           "remove_empty_row", "remove_instance"]

#: A series, study or patient row that names no child: (its table, its id).
EmptyRow = tuple[str, int]

T = TypeVar("T")

#: A removal whose parent row gained a child meanwhile is run this many times at most.
_ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """What one instance row says about its object."""

    sop_instance_uid: str
    object_key: str
    sha256: str


def object_refs(engine: Engine, batch: int = 1000) -> Iterator[ObjectRef]:
    """Every instance row's object key and hash, in batches of rows after the last one seen.

    Each batch is one short read, fetched whole before its rows are handed on: the caller
    hashes objects between rows for hours, and one cursor over the whole table held one
    snapshot as long (SQLite's WAL could not be checkpointed and grew with every C-STORE;
    PostgreSQL kept a transaction open that held back VACUUM everywhere). A row committed
    during the pass is seen if its id comes later; reconcile's fix re-checks whatever it
    acts on, so a pass that is not one snapshot costs it nothing.
    """
    columns = select(Instance.id, Instance.sop_instance_uid, Instance.object_key,
                     Instance.sha256).order_by(Instance.id).limit(batch)
    after = 0  # ids start at 1
    while True:
        query = columns.where(Instance.id > after)
        try:
            rows = read_index(engine, lambda conn, query=query: conn.execute(query).all())
        except SQLAlchemyError as exc:
            raise OutOfResources("index unavailable") from exc
        for row in rows:
            yield ObjectRef(str(row[1]), str(row[2]), str(row[3]))
        if len(rows) < batch:
            return
        after = rows[-1][0]


def refers_to(engine: Engine, object_key: str) -> bool:
    """True if some instance row points at ``object_key`` now."""
    try:
        query = select(exists().where(Instance.object_key == object_key))
        return bool(read_index(engine, lambda conn: conn.execute(query).scalar()))
    except SQLAlchemyError as exc:
        raise OutOfResources("index unavailable") from exc


def remove_instance(engine: Engine, sop_instance_uid: str, object_key: str) -> bool:
    """Remove the instance row if it still points at ``object_key``; prune empty parents.

    Returns whether a row was removed. Series, study and patient rows left without children
    are removed in the same transaction, so C-FIND does not answer with empty entities; each
    only if no child names it as that statement runs (``prune``), so a C-STORE into the same
    series meanwhile keeps its rows.
    """
    def remove(conn: Connection) -> bool:
        found = conn.execute(
            select(Instance.id, Instance.series_fk).where(
                Instance.sop_instance_uid == sop_instance_uid,
                Instance.object_key == object_key,
            )
        ).first()
        if found is None:
            return False
        conn.execute(delete(Instance).where(Instance.id == found.id))
        prune_empty_parents(conn, found.series_fk)
        return True

    return _removing(engine, remove)


def empty_rows(engine: Engine) -> list[EmptyRow]:
    """Series rows no instance names, study rows no series names, patient rows no study
    names: C-FIND answers each as a series, study or patient with nothing in it (one left
    by an instance sent again under another study before such rows were removed with the
    move, or by a removal cut short). Three reads, each one anti-join on an indexed key."""
    queries = (
        ("series", select(Series.id).where(~exists().where(Instance.series_fk == Series.id))),
        ("study", select(Study.id).where(~exists().where(Series.study_fk == Study.id))),
        ("patient", select(Patient.id).where(~exists().where(Study.patient_fk == Patient.id))),
    )
    found: list[EmptyRow] = []
    try:
        for table, query in queries:
            ids = read_index(engine, lambda conn, query=query: conn.execute(query).scalars().all())
            found += [(table, int(i)) for i in ids]
    except SQLAlchemyError as exc:
        raise OutOfResources("index unavailable") from exc
    return found


def remove_empty_row(engine: Engine, row: EmptyRow) -> bool:
    """Remove a row :func:`empty_rows` found, and the parents it leaves empty, if it still
    names no child (a C-STORE may have filed an instance under it since): whether it went.
    One conditional statement per row (``prune``), in a transaction of its own."""
    table, row_id = row
    prune = {"series": prune_empty_parents, "study": prune_empty_study,
             "patient": prune_empty_patient}[table]
    return _removing(engine, lambda conn: prune(conn, row_id))


def _removing(engine: Engine, work: Callable[[Connection], T]) -> T:
    """``work`` (a removal that prunes parents) in a write transaction of its own, run again
    where a parent's conditional delete failed its foreign key check.

    PostgreSQL at READ COMMITTED: a C-STORE filing an instance under the parent, not yet
    committed, is not seen by the delete's ``NOT EXISTS``; the delete waits for its lock,
    and once the C-STORE commits the foreign key check fails the statement
    (``IntegrityError``). Run again, the ``NOT EXISTS`` sees the new child and keeps the
    parent. Without this the run ended there with 'index unavailable' (exit 2)."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with engine.connect().execution_options(**WRITE) as conn, conn.begin():
                return work(conn)
        except IntegrityError as exc:
            if attempt == _ATTEMPTS:
                raise OutOfResources("index unavailable") from exc
        except SQLAlchemyError as exc:
            raise OutOfResources("index unavailable") from exc
    raise AssertionError("unreachable")
