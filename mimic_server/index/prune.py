"""Removing the series, study and patient rows an instance row left empty, in the
transaction that moved or removed it: C-FIND would otherwise answer them, with no instance
to count or retrieve (a ghost study in a worklist).

Used by the repository (an instance sent again under another series or study: the
modality corrected a mis-filed study) and by ``mimic reconcile --fix`` (an instance row
removed). Each row goes in one statement, ``DELETE ... WHERE NOT EXISTS (a child row)``,
never a check and then a delete: with PostgreSQL at READ COMMITTED each statement sees
what committed before it began, so a child committed meanwhile keeps its parent. A
child inserted, not yet committed, by a concurrent C-STORE holds a key-share lock on its
parent row (the foreign key): the delete waits for it, then the foreign key check, which
sees the child committed, fails the statement with an ``IntegrityError``, which the
repository (and ``maintenance`` for ``mimic reconcile --fix``) retries, finding the parent
in use; the other way round, a C-STORE whose parent row was deleted under it fails its own
foreign key check, or its series check (``repository._series_fk``), and is retried, making
the rows again. SQLite has one writer at a time.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, exists

from mimic_server.index.models import Instance, Patient, Series, Study

__all__ = ["prune_empty_parents", "prune_empty_patient", "prune_empty_study"]


def prune_empty_parents(conn: Connection, series_id: int) -> bool:
    """Remove series ``series_id`` if no instance row names it, then its study if no series
    row names that, then its patient if no study row does; whether the series went.

    At most three statements, each stopping the walk up when nothing was removed."""
    study_id = conn.execute(
        delete(Series)
        .where(Series.id == series_id, ~exists().where(Instance.series_fk == series_id))
        .returning(Series.study_fk)
    ).scalar()
    if study_id is None:
        return False
    prune_empty_study(conn, study_id)
    return True


def prune_empty_study(conn: Connection, study_id: int) -> bool:
    """Remove study ``study_id`` if no series row names it, then its patient if no study
    row does; whether the study went."""
    patient_id = conn.execute(
        delete(Study)
        .where(Study.id == study_id, ~exists().where(Series.study_fk == study_id))
        .returning(Study.patient_fk)
    ).scalar()
    if patient_id is None:
        return False
    prune_empty_patient(conn, patient_id)
    return True


def prune_empty_patient(conn: Connection, patient_id: int) -> bool:
    """Remove patient ``patient_id`` if no study row names it; whether it went."""
    removed = conn.execute(
        delete(Patient)
        .where(Patient.id == patient_id, ~exists().where(Study.patient_fk == patient_id))
        .returning(Patient.id)
    ).scalar()
    return removed is not None
