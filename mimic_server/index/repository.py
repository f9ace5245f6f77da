"""The index repository: one transaction per method, one lock order (patient, study, series,
instance), upserts that let concurrent senders of one study meet without duplicates.

Concurrent ``upsert_instance`` calls share transactions (``group_commit``): each still returns
only once the transaction holding its row has committed, with its own result or error.

On PostgreSQL a new instance of a series already known, the usual C-STORE, is one statement
that commits itself: the instance's insert and its audit row in one ``WITH`` (``_alone``),
sent once the object is durable. A transaction of its own would cost BEGIN, two inserts and
COMMIT, four round trips to the database where this is one (docs/benchmarks.md); concurrent
commits still share PostgreSQL's WAL flushes. Anything else (a new series, a known SOP
Instance UID, several C-STOREs in one batch) is written in a transaction as before.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError

from mimic_server.codec.dicom_json import json_text
from mimic_server.errors import HierarchyConflict, OutOfResources
from mimic_server.index import StoredInstance, audit_table
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.driver import DriverStatement, Gathered, NotGathered
from mimic_server.index.engine import (
    answers,
    commit_outcome_unknown,
    driver_error,
    outcome_unknown,
    read_index,
    timed_out,
    write_transaction,
)
from mimic_server.index.group_commit import MAX_BATCH, GroupCommitter
from mimic_server.index.models import AuditEvent, Instance, Patient, Series, Study
from mimic_server.index.prune import prune_empty_parents

log = logging.getLogger(__name__)

_ATTEMPTS = 4
#: A transient failure is tried again only while the attempts so far took less than this: a
#: lost insert race, a deadlock or a serialization failure fails within a second or so, and
#: its retry is cheap. A failure after a full wait (SQLite's busy timeout, PostgreSQL's
#: lock or statement timeout: ``engine.timed_out``) is not waited out again: 4 such waits
#: answered a C-STORE after minutes, past the sender's DIMSE timeout, with its thread held.
_RETRY_WITHIN = 5.0
_CACHED_SERIES = 10000
#: At most this many distinct reasons of refused writes are logged (``_say_why``).
_REASONS_SAID = 32
#: PostgreSQL: up to the pool size committing at once, so batches form only beyond 8 concurrent
#: writers. PostgreSQL already shares WAL flushes between concurrent commits, and a batch's
#: statements run one after another: one batch at a time measured 0.55x (docs/benchmarks.md).
_PG_IN_FLIGHT = 8
#: Of a process's PostgreSQL connections (``MIMIC_DATABASE_POOL_SIZE``), those the batches in
#: flight leave to the rest: a C-STORE's own transaction (``_transact(own=True)``), reads
#: (C-FIND, C-MOVE, C-GET), audit records and readiness checks. One: with a pool of 3, two
#: batches in flight stored 159-169 objects/s over 16 associations at 2.4 ms from
#: PostgreSQL, one batch 123-128 (docs/benchmarks.md).
_PG_LEFT_BY_BATCHES = 1


#: A pool smaller than this (a small server's budget, ``MIMIC_DATABASE_POOL_SIZE``) has no
#: C-STORE transaction wait for its object's put (``overlaps_put``).
_OVERLAP_MIN_POOL = 16


def pg_in_flight(pool_size: int) -> int:
    """Group-commit batches that may commit at once on PostgreSQL with ``pool_size``
    connections: each holds one (and keeps it for the next batch), so a small pool, sized
    to a small server's connection limit, must not be all batches."""
    return max(1, min(_PG_IN_FLIGHT, pool_size - _PG_LEFT_BY_BATCHES))


class SqlIndex:
    """An :class:`~mimic_server.index.Index` on SQLAlchemy Core."""

    def __init__(
        self, engine: Engine, *, group_commit: bool = True, max_batch: int = MAX_BATCH,
        in_flight: int | None = None, pool_size: int = 32,
    ) -> None:
        self.engine = engine
        #: Shares the commits of concurrent upserts (None: one transaction each). SQLite has
        #: one writer: one batch at a time. PostgreSQL runs up to 8 side by side (see above),
        #: fewer where the engine's ``pool_size`` is small (``pg_in_flight``).
        if in_flight is None:
            in_flight = 1 if engine.dialect.name == "sqlite" else pg_in_flight(pool_size)
        self.committer = (
            GroupCommitter(engine, max_batch=max_batch, in_flight=in_flight)
            if group_commit else None
        )
        #: Transactions may wait for the object's put before they commit: PostgreSQL runs
        #: them side by side, so a waiting one blocks no other writer; SQLite's one writer
        #: would hold its lock (``overlaps_put``).
        self._side_by_side = engine.dialect.name == "postgresql"
        #: Such a transaction holds its connection through the put (a large object's upload
        #: to Blob Storage takes seconds): in a pool of 3, two of them left none to the
        #: C-FINDs, audit records and readiness checks, which waited and were refused. With
        #: a small pool the put comes first, and the transaction after it.
        self._overlaps = self._side_by_side and pool_size >= _OVERLAP_MIN_POOL
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        # The instance's series row id, checked in the same statement to still be the row of
        # its Series Instance UID, in its study, of the patient it was filed under: NULL (a
        # NOT NULL violation, an IntegrityError) otherwise. UIDs, not row ids: SQLite gives
        # a deleted top id to the next new row, of whatever study and patient.
        self._series_fk = (
            select(Series.id)
            .join(Study, Series.study_fk == Study.id)
            .join(Patient, Study.patient_fk == Patient.id)
            .where(Series.id == bindparam("cached_series_fk"))
            .where(Series.series_instance_uid == bindparam("cached_series_uid"))
            .where(Study.study_instance_uid == bindparam("cached_study_uid"))
            .where(Patient.patient_key == bindparam("cached_patient_key"))
            .scalar_subquery()
        )
        self._insert_instance = (
            self._insert(Instance)
            .values(series_fk=self._series_fk)
            .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
            .returning(Instance.id)
        )
        #: The same insert on the driver's cursor (psycopg, sqlite3), the header as JSON text.
        self._driver_insert = DriverStatement.on(
            engine, self._insert_instance, _INSTANCE_KEYS, encoded=frozenset({"header"})
        )
        #: PostgreSQL: the insert with its audit row in one statement (``_alone``).
        self._insert_with_audit = (
            DriverStatement.on(engine, self._with_audit_row(), _INSTANCE_KEYS + _CHECK_KEYS
                               + audit_table.KEYS, encoded=frozenset({"header"}))
            if self._side_by_side and self._driver_insert is not None else None
        )
        # The series an instance names (``_filed_as``: its Series and Study Instance UIDs, its
        # Patient ID and issuer) -> where it is filed (``_Filed``: the series row id and the
        # key of the study's patient), filled after a commit: the instances of a series
        # then skip the three patient / study / series look-ups, and their checks (a key
        # that differs in any part is looked up, and checked, again). Another process
        # (`mimic reconcile --fix`) may delete a series row, and SQLite then gives its id to
        # the next new row, so an entry is trusted only as far as the insert's check above: a
        # stale entry fails it (an IntegrityError), which empties the cache before the retry.
        self._series_ids: OrderedDict[_FiledAs, _Filed] = OrderedDict()
        self._cache_lock = threading.Lock()
        #: The database's reasons for a refusal already logged (``_say_why``).
        self._reasons_said: set[str] = set()

    def overlaps_put(self, attrs: InstanceAttributes) -> bool:
        """Whether the index transaction of ``attrs`` has round trips to make while the
        object's put runs (``archive.ingest.keep`` then puts it on a helper thread): on
        PostgreSQL with a pool of at least ``_OVERLAP_MIN_POOL`` connections, unless it will
        be one statement sent after the put (``_alone``)."""
        if not self._overlaps:
            return False
        if self._insert_with_audit is None or self.committer is None:
            return True
        with self._cache_lock:
            return _filed_as(attrs) not in self._series_ids

    def close(self) -> None:
        """Give the connections the group commit keeps back to the pool: before the engine
        is disposed, which closes only the connections in the pool."""
        if self.committer is not None:
            self.committer.close()

    def upsert_instance(
        self,
        attrs: InstanceAttributes,
        *,
        transfer_syntax_uid: str,
        object_key: str,
        sha256: str,
        size: int,
        received_from: str,
        in_transaction: Callable[[Connection], None] | None = None,
        before_new_rows: Callable[[], None] | None = None,
    ) -> str | None:
        """See :class:`~mimic_server.index.Index`; ``in_transaction`` runs on the upsert's
        connection before it commits (the C-STORE's audit row), in every attempt: a
        rolled-back attempt takes its writes with it. ``before_new_rows`` runs before the
        transaction inserts a patient, study or series row (the wait for the object's put,
        where the two overlap: ``archive.ingest.keep``), so that no other writer of that
        patient, study or series waits on rows held uncommitted while the put runs."""
        row = {
            "sop_class_uid": attrs.sop_class_uid,
            "instance_number": attrs.instance_number,
            "transfer_syntax_uid": transfer_syntax_uid,
            "specific_character_set": attrs.specific_character_set,
            "size": size,
            "sha256": sha256,
            "object_key": object_key,
            "header": attrs.header,
            "received_from": received_from[:200],
            "received_at": datetime.now(UTC),
        }

        def work(conn: Connection) -> tuple[str | None, _Filed]:
            upserted = self._upsert(conn, attrs, row, before_new_rows)
            if in_transaction is not None:
                in_transaction(conn)
            return upserted

        # A caller that waits for its object's put inside its transaction (the overlap,
        # PostgreSQL: ``before_new_rows``) has a transaction of its own. In a shared batch a
        # slow put (a large object to Blob Storage) held back every C-STORE batched with it,
        # and as many of them as batches may be in flight held every batch, each other
        # C-STORE of the process refused 0xA700 after ``group_commit.QUEUE_SECONDS``.
        own = before_new_rows is not None and self._side_by_side
        started = time.monotonic()
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                # Returns once the transaction holding the row has committed (both ways).
                alone = self._alone(attrs, row, in_transaction)
                upserted = self._transact(work, alone, own=own)
                if isinstance(upserted, _NotNew):  # its SOP Instance UID has a row
                    upserted = self._ours_or_transact(attrs, object_key, upserted, work)
                replaced, filed = upserted
                self._remember(_filed_as(attrs), filed)
                return replaced
            except (OperationalError, IntegrityError) as exc:
                if isinstance(exc, IntegrityError):
                    with self._cache_lock:
                        self._series_ids.clear()
                # Lock timeouts, serialization failures and a lost insert race are transient;
                # but not after a write whose outcome is unknown: a retry could no longer tell
                # a row it committed itself from another object's (``_ours_or_transact``).
                if (attempt == _ATTEMPTS or not _transient(exc) or timed_out(exc)
                        or time.monotonic() - started >= _RETRY_WITHIN
                        or commit_outcome_unknown(exc)):
                    self._say_why(exc)
                    raise OutOfResources("index unavailable") from exc
                time.sleep(0.05 * attempt + random.random() * 0.05)
            except SQLAlchemyError as exc:
                self._say_why(exc)
                raise OutOfResources("index unavailable") from exc
        raise AssertionError("unreachable")

    def _say_why(self, exc: SQLAlchemyError) -> None:
        """Log the database's reason for refusing a C-STORE (or STOW-RS instance) at ERROR,
        once per process for each kind: the refusal itself says only "index unavailable",
        and an index the server cannot write refused every C-STORE with no word why.

        The driver's class and code; the first line of its message on SQLite only (its
        messages quote no values; PostgreSQL's may quote the instance's), never SQLAlchemy's
        text of the error, which holds the statement's parameters: patient data."""
        if not isinstance(exc, DBAPIError):
            return
        said = driver_error(exc, message=self.engine.dialect.name == "sqlite")
        with self._cache_lock:
            if said in self._reasons_said or len(self._reasons_said) >= _REASONS_SAID:
                return
            self._reasons_said.add(said)
        log.error("index write failed", extra={"error": said})

    def _transact(self, work: Callable[[Connection], Any],
                  alone: Callable[[Connection, bool], Any] | None = None,
                  *, own: bool = False) -> Any:
        """``work`` in a committed write transaction: shared with concurrent callers, or its
        own when group commit is off or ``own``; ``alone`` instead where it commits by
        itself (in a shared one)."""
        if self.committer is not None and not own:
            return self.committer.run(work, alone)
        return write_transaction(self.engine, work)

    def _with_audit_row(self) -> Any:
        """``WITH new_instance AS (the insert), new_audit AS (INSERT INTO audit_events ...
        SELECT the row's values FROM new_instance) SELECT id FROM new_instance``: the audit row
        only when the instance row is new, in the statement that inserts it."""
        new = self._insert_instance.values(
            {key: bindparam(key) for key in _INSTANCE_KEYS}).cte("new_instance")
        columns = AuditEvent.__table__.c
        values = select(*(bindparam(key, type_=columns[key].type) for key in audit_table.KEYS))
        audit = insert(AuditEvent).from_select(list(audit_table.KEYS), values.select_from(new))
        return select(new.c.id).add_cte(audit.cte("new_audit"))

    def _alone(
        self, attrs: InstanceAttributes, row: dict[str, Any],
        in_transaction: Callable[[Connection], None] | None,
    ) -> Callable[[Connection, bool], Any] | None:
        """The upsert as one statement that commits itself (PostgreSQL, a series already
        known, at most the audit row beside it), or None: it runs in a transaction.

        ``in_transaction`` runs here, on a :class:`Gathered` (the C-STORE's: it waits for
        the object's put to be durable, then gives its audit row), before the statement is
        sent. The statement inserts nothing on a known SOP Instance UID and answers
        :class:`_NotNew`; run again after its connection was lost, it finds its own row so,
        or another's, and passes on whether the first may have committed (``_NotNew``)."""
        if (self._insert_with_audit is None or self._driver_insert is None
                or self.committer is None):  # group commit off: a transaction each
            return None
        with self._cache_lock:
            filed = self._series_ids.get(_filed_as(attrs))
        if filed is None:
            return None
        gathered = Gathered()
        if in_transaction is not None:
            try:
                in_transaction(gathered)  # type: ignore[arg-type]
            except NotGathered:
                return None
        if len(gathered.audit_rows) > 1:
            return None
        params = {
            "sop_instance_uid": attrs.sop_instance_uid, **row,
            "header": json_text(row["header"]),
            **_checked(attrs, filed),
        }
        statement = self._driver_insert
        if gathered.audit_rows:
            params.update(gathered.audit_rows[0])
            statement = self._insert_with_audit
        upserted = (None, filed)

        def alone(conn: Connection, uncertain: bool) -> Any:
            if statement.first(conn, params) is not None:
                return upserted
            return _NotNew(filed, uncertain)

        return alone

    def _ours_or_transact(self, attrs: InstanceAttributes, object_key: str,
                          not_new: _NotNew, work: Callable[[Connection], Any]) -> Any:
        """After ``_alone`` found a row for the SOP Instance UID: its own row, committed by
        a statement whose connection was lost before it answered (done), or another
        object's (replaced in a transaction).

        Unless the statement was sent again after it was lost without an answer (it may
        have committed then: ``_NotNew.uncertain``): another object's row found then may be
        a copy stored meanwhile by another association, which replaced the row this
        statement did commit (and deleted its object). Replacing that row in turn would
        delete the newer copy's object too, and point the row at a deleted one. Whether the
        first statement committed cannot be told, so the caller is refused with its outcome
        unknown: its object is kept (an orphan that ``mimic reconcile`` removes, at worst)
        and the modality sends it again. So is a failure to read the row then."""
        uid = attrs.sop_instance_uid
        try:
            found = read_index(self.engine, lambda conn: conn.execute(
                select(Instance.object_key).where(Instance.sop_instance_uid == uid)).scalar())
        except BaseException as exc:
            if not_new.uncertain:
                outcome_unknown(exc)
            raise
        if found == object_key:
            return None, not_new.filed
        if not_new.uncertain:
            log.warning("index statement lost, and its SOP Instance UID's row since holds "
                        "another object; the outcome is unknown, the object is kept")
            raise outcome_unknown(OutOfResources("index unavailable"))
        return self._transact(work)

    def _forget(self, series_fk: int) -> None:
        """Drop the cached entries of a series row removed (``_upsert_instance``): the
        insert's check would refuse them anyway (an IntegrityError, and the whole cache
        emptied before a retry), and SQLite gives the id to the next new row."""
        with self._cache_lock:
            for filed_as in [k for k, v in self._series_ids.items() if v.series_fk == series_fk]:
                del self._series_ids[filed_as]

    def _remember(self, filed_as: _FiledAs, filed: _Filed) -> None:
        with self._cache_lock:
            self._series_ids[filed_as] = filed
            self._series_ids.move_to_end(filed_as)
            while len(self._series_ids) > _CACHED_SERIES:
                self._series_ids.popitem(last=False)

    def _upsert(
        self, conn: Connection, attrs: InstanceAttributes, row: dict[str, Any],
        before_new_rows: Callable[[], None] | None = None,
    ) -> tuple[str | None, _Filed]:
        with self._cache_lock:
            cached = self._series_ids.get(_filed_as(attrs))
        before_new_rows = before_new_rows or _nothing
        filed = (cached if cached is not None
                 else self._hierarchy(conn, attrs, row, before_new_rows))
        return self._upsert_instance(conn, attrs, row, filed, before_new_rows), filed

    def _hierarchy(
        self, conn: Connection, attrs: InstanceAttributes, row: dict[str, Any],
        before_new_rows: Callable[[], None],
    ) -> _Filed:
        """Patient, study and series rows, in this lock order; where the series is filed.

        A study already filed under another Patient ID, or a series under another study,
        raises :class:`HierarchyConflict` (the transaction rolls back): filed under the row
        found, the instance would be found neither under its own study nor its own patient.
        ``before_new_rows`` runs before the first of them is inserted: an inserted row stays
        locked until the commit, and every other writer of it waits until then.
        """
        study_fk, patient_key = self._study(conn, attrs, row["received_at"], before_new_rows)
        return _Filed(self._series(conn, attrs, study_fk, row["received_at"], before_new_rows),
                      patient_key)

    def _study(
        self, conn: Connection, attrs: InstanceAttributes, now: datetime,
        before_new_rows: Callable[[], None],
    ) -> tuple[int, str]:
        """The study's row id and its patient's key; their rows made if it is new."""
        known = self._known_study(conn, attrs)
        if known is not None:
            return known
        before_new_rows()
        patient_fk = self._get_or_create(conn, Patient, "patient_key", {
            "patient_key": attrs.patient_key,
            "patient_id": attrs.patient_id,
            "issuer_of_patient_id": attrs.issuer_of_patient_id,
            "patient_name": attrs.patient_name,
            "patient_birth_date": attrs.patient_birth_date,
            "patient_sex": attrs.patient_sex,
            "created_at": now,
        })
        created = self._create(conn, Study, "study_instance_uid", {
            "patient_fk": patient_fk,
            "study_instance_uid": attrs.study_instance_uid,
            "study_date": attrs.study_date,
            "study_time": attrs.study_time,
            "accession_number": attrs.accession_number,
            "study_id": attrs.study_id,
            "study_description": attrs.study_description,
            "referring_physician_name": attrs.referring_physician_name,
            "created_at": now,
        })
        if created is not None:
            return created, attrs.patient_key
        known = self._known_study(conn, attrs)  # another writer filed it first: under whom?
        if known is None:  # and it was deleted again since (``mimic reconcile --fix``)
            raise OutOfResources("index unavailable")
        return known

    def _known_study(
        self, conn: Connection, attrs: InstanceAttributes
    ) -> tuple[int, str] | None:
        """The study's row id and its patient's key if it is filed, under a patient
        ``attrs`` may name. An instance that names no Patient ID, or no issuer, where the
        study's patient has one (a workstation adding a derived object to a modality's
        study) is filed under the study's patient; another Patient ID, or another issuer,
        is another patient. A study filed without a Patient ID is its own patient."""
        found = conn.execute(
            select(Study.id, Patient.patient_key, Patient.patient_id,
                   Patient.issuer_of_patient_id)
            .join(Patient, Study.patient_fk == Patient.id)
            .where(Study.study_instance_uid == attrs.study_instance_uid)
        ).first()
        if found is None:
            return None
        if attrs.patient_id:
            issuers = {found.issuer_of_patient_id, attrs.issuer_of_patient_id} - {""}
            if found.patient_id != attrs.patient_id or len(issuers) > 1:
                raise HierarchyConflict(
                    "Study Instance UID already filed under another Patient ID")
        return int(found.id), str(found.patient_key)

    def _series(self, conn: Connection, attrs: InstanceAttributes, study_fk: int,
                now: datetime, before_new_rows: Callable[[], None]) -> int:
        """The series' row id, made if it is new, refused if filed under another study."""
        filed = select(Series.id, Series.study_fk).where(
            Series.series_instance_uid == attrs.series_instance_uid)
        found = conn.execute(filed).first()
        if found is None:
            before_new_rows()
            created = self._create(conn, Series, "series_instance_uid", {
                "study_fk": study_fk,
                "series_instance_uid": attrs.series_instance_uid,
                "modality": attrs.modality,
                "series_number": attrs.series_number,
                "series_description": attrs.series_description,
                "series_date": attrs.series_date,
                "series_time": attrs.series_time,
                "body_part_examined": attrs.body_part_examined,
                "created_at": now,
            })
            if created is not None:
                return created
            found = conn.execute(filed).one()  # another writer filed it first
        if found.study_fk != study_fk:
            raise HierarchyConflict("Series Instance UID already filed under another study")
        return int(found.id)

    def _upsert_instance(
        self, conn: Connection, attrs: InstanceAttributes, row: dict[str, Any], filed: _Filed,
        before_new_rows: Callable[[], None],
    ) -> str | None:
        """Insert the instance, or switch its row to the new object: the replaced key.

        One statement for a new instance (the common case): the insert that does nothing on
        a known SOP Instance UID. Only then is the existing row read (locked on PostgreSQL)
        and updated. On PostgreSQL a concurrent insert of the same UID makes this insert
        wait for that transaction, then find its row.

        A row that moves to another series (the modality corrected a mis-filed study and
        sent it again) leaves its series, and that series' study and patient, empty where it
        was their last: they are removed in this transaction (``prune.prune_empty_parents``),
        or C-FIND answered a study or series with no instance. Only this path pays for it:
        the row's series comes with the read of the row it already made.
        """
        checked = _checked(attrs, filed)
        params = {"sop_instance_uid": attrs.sop_instance_uid, **row, **checked}
        if self._driver_insert is not None:
            params["header"] = json_text(row["header"])
            inserted = self._driver_insert.first(conn, params)
        else:
            inserted = conn.execute(self._insert_instance, params).first()
        if inserted is not None:
            return None
        existing = select(Instance.id, Instance.object_key, Instance.series_fk).where(
            Instance.sop_instance_uid == attrs.sop_instance_uid
        )
        if conn.dialect.name == "postgresql":
            existing = existing.with_for_update()
        found = conn.execute(existing).one()
        switch = update(Instance).where(Instance.id == found.id)
        conn.execute(switch.values(**row, series_fk=self._series_fk), checked)
        if found.series_fk != filed.series_fk:
            # A removed row stays locked until the commit: not through the object's put
            # (as for new rows), or a C-STORE into the same old series would wait on it.
            before_new_rows()
            if prune_empty_parents(conn, found.series_fk):
                self._forget(found.series_fk)
        return str(found.object_key)

    def _get_or_create(
        self, conn: Connection, model: Any, unique: str, values: dict[str, Any]
    ) -> int:
        column = getattr(model, unique)
        found = conn.execute(select(model.id).where(column == values[unique])).scalar()
        if found is not None:
            return int(found)
        inserted = self._create(conn, model, unique, values)
        if inserted is not None:
            return inserted
        # Another writer inserted it between our select and insert: it is visible now.
        return int(conn.execute(select(model.id).where(column == values[unique])).scalar_one())

    def _create(
        self, conn: Connection, model: Any, unique: str, values: dict[str, Any]
    ) -> int | None:
        """Insert the row; its id, or None where another writer has inserted it first."""
        stmt = self._insert(model).values(**values).on_conflict_do_nothing(index_elements=[unique])
        inserted = conn.execute(stmt.returning(model.id)).scalar()
        return int(inserted) if inserted is not None else None

    def get_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        query = select(
            Instance.sop_instance_uid,
            Instance.sop_class_uid,
            Instance.transfer_syntax_uid,
            Instance.object_key,
            Instance.sha256,
            Instance.size,
        ).where(Instance.sop_instance_uid == sop_instance_uid)
        try:
            found = read_index(self.engine, lambda conn: conn.execute(query).first())
        except SQLAlchemyError as exc:
            raise OutOfResources("index unavailable") from exc
        return StoredInstance(*found) if found else None

    def count_instances(self) -> int:
        try:
            return int(read_index(
                self.engine, lambda conn: conn.execute(select(func.count(Instance.id))).scalar_one()
            ))
        except SQLAlchemyError as exc:
            raise OutOfResources("index unavailable") from exc

    def ping(self) -> None:
        try:
            answers(self.engine)
        except SQLAlchemyError as exc:
            raise OutOfResources("index unavailable") from exc


def _nothing() -> None:
    """No wait before new rows (``upsert_instance``'s ``before_new_rows`` not given)."""


#: What a series is filed under, as an instance names it: its Series and Study Instance UIDs,
#: its Patient ID and Issuer of Patient ID.
_FiledAs = tuple[str, str, str, str]


def _filed_as(attrs: InstanceAttributes) -> _FiledAs:
    return (attrs.series_instance_uid, attrs.study_instance_uid, attrs.patient_id,
            attrs.issuer_of_patient_id)


class _Filed(NamedTuple):
    """Where the index files an instance's series: the series row id, and the key of the
    study's patient (which an instance may name without its issuer)."""

    series_fk: int
    patient_key: str


def _checked(attrs: InstanceAttributes, filed: _Filed) -> dict[str, Any]:
    """The parameters of the series check in the instance's insert (``_series_fk``)."""
    return {"cached_series_fk": filed.series_fk,
            "cached_series_uid": attrs.series_instance_uid,
            "cached_study_uid": attrs.study_instance_uid,
            "cached_patient_key": filed.patient_key}


#: The parameters of the instance insert (its columns but ``series_fk``, and the series check).
_INSTANCE_KEYS = (
    "sop_instance_uid", "sop_class_uid", "instance_number", "transfer_syntax_uid",
    "specific_character_set", "size", "sha256", "object_key", "header", "received_from",
    "received_at",
)
_CHECK_KEYS = ("cached_series_fk", "cached_series_uid", "cached_study_uid", "cached_patient_key")


class _NotNew:
    """``_alone``'s answer when the SOP Instance UID already has a row: nothing written by
    this statement; ``uncertain``: it was sent before, lost without an answer, and that one
    may have written the row."""

    __slots__ = ("filed", "uncertain")

    def __init__(self, filed: _Filed, uncertain: bool = False) -> None:
        self.filed = filed
        self.uncertain = uncertain


def _transient(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True  # a concurrent insert of the same SOP Instance: the retry sees it
    message = str(exc.orig).lower()
    return any(
        marker in message
        for marker in (
            "locked", "busy", "deadlock", "could not serialize", "serialization",
        )
    )
