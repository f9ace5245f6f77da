"""Index queries for maintenance (``mimic reconcile``), kept apart from the hot-path repository.

Every change is conditional on what reconcile saw: an instance row is removed only if it still
points at the object found missing or corrupt, so a C-STORE that switched the row to new
bytes in the meantime is never undone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, exists, select
from sqlalchemy.exc import SQLAlchemyError

from mimic_server.errors import OutOfResources
from mimic_server.index.engine import WRITE, read_index
from mimic_server.index.models import Instance, Patient, Series, Study

__all__ = ["ObjectRef", "object_refs", "refers_to", "remove_instance"]


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """What one instance row says about its object."""

    sop_instance_uid: str
    object_key: str
    sha256: str


def object_refs(engine: Engine, batch: int = 1000) -> Iterator[ObjectRef]:
    """Every instance row's object key and hash, streamed in batches."""
    query = select(Instance.sop_instance_uid, Instance.object_key, Instance.sha256).order_by(
        Instance.id
    )
    try:
        with engine.connect() as conn:
            result = conn.execution_options(yield_per=batch).execute(query)
            for row in result:
                yield ObjectRef(str(row[0]), str(row[1]), str(row[2]))
    except SQLAlchemyError as exc:
        raise OutOfResources("index unavailable") from exc


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
    are removed in the same transaction, so C-FIND does not answer with empty entities.
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
            _prune(conn, found.series_fk)
            return True
    except SQLAlchemyError as exc:
        raise OutOfResources("index unavailable") from exc


def _prune(conn: Connection, series_id: int) -> None:
    study_id = conn.execute(select(Series.study_fk).where(Series.id == series_id)).scalar()
    if conn.execute(select(exists().where(Instance.series_fk == series_id))).scalar():
        return
    conn.execute(delete(Series).where(Series.id == series_id))
    patient_id = conn.execute(select(Study.patient_fk).where(Study.id == study_id)).scalar()
    if conn.execute(select(exists().where(Series.study_fk == study_id))).scalar():
        return
    conn.execute(delete(Study).where(Study.id == study_id))
    if conn.execute(select(exists().where(Study.patient_fk == patient_id))).scalar():
        return
    conn.execute(delete(Patient).where(Patient.id == patient_id))
