"""Index queries for maintenance (``mimic reconcile``), kept apart from the hot-path repository.

Every change is conditional on what reconcile saw: an instance row is removed only if it still
points at the object found missing or corrupt, so a C-STORE that switched the row to new
bytes in the meantime is never undone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Engine, delete, exists, select
from sqlalchemy.exc import SQLAlchemyError

from mimic_server.errors import OutOfResources
from mimic_server.index.engine import WRITE, read_index
from mimic_server.index.models import Instance
from mimic_server.index.prune import prune_empty_parents

__all__ = ["ObjectRef", "object_refs", "refers_to", "remove_instance"]


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
    try:
        with engine.connect().execution_options(**WRITE) as conn, conn.begin():
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
    except SQLAlchemyError as exc:
        raise OutOfResources("index unavailable") from exc
