"""Answers a :class:`Query` from the index, streaming: one SQL statement, read in pages
(:mod:`mimic_server.query.pages`), matched row by row.

SQL narrows the candidates with predicates on typed, indexed columns that never exclude a
true match (a superset); :meth:`Constraint.matches` then decides. Values for keys without a
typed column come from the stored header (DICOM JSON) of one instance of the entity.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from sqlalchemy import Engine, Select, and_, bindparam, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from mimic_server.codec.answer import PLAIN_VRS, UTF8, Answer
from mimic_server.errors import OutOfResources
from mimic_server.index.engine import read_index
from mimic_server.index.models import Instance, Patient, Series, Study
from mimic_server.query.identifier import Query
from mimic_server.query.keys import COLUMNS, COMPUTED, Level
from mimic_server.query.matching import UNMETERED, Constraint, Kind, Meter
from mimic_server.query.pages import PAGE_SIZE, Budget, pages
from mimic_server.query.sequence_answer import answered_sequence
from mimic_server.query.stored_values import json_values

_TABLES = {Level.PATIENT: Patient, Level.STUDY: Study, Level.SERIES: Series, Level.IMAGE: Instance}
_TEXT_COLUMNS = {k for k, c in COLUMNS.items() if k not in ("SeriesNumber", "InstanceNumber")}


@dataclass(frozen=True)
class InstanceRef:
    """One instance to retrieve."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    object_key: str
    sha256: str
    #: Its study and patient as the index files them, for the audit trail of what a
    #: retrieve sent (``dimse/audited.py``), which never parses the object for them.
    study_instance_uid: str = ""
    patient_id: str = ""
    patient_name: str = ""
    #: Its stored size in bytes, as indexed (0: not known), which says whether a retrieve
    #: reads it ahead (``dimse/retrieve.py``).
    size: int = 0


#: The columns of an :class:`InstanceRef`, in its fields' order (a statement selecting them
#: joins the instance's series, study and patient).
_REF_COLUMNS = (Instance.sop_class_uid, Instance.sop_instance_uid, Instance.transfer_syntax_uid,
                Instance.object_key, Instance.sha256, Study.study_instance_uid,
                Patient.patient_id, Patient.patient_name, Instance.size)
_REF_WIDTH = len(_REF_COLUMNS)


class ResultLimitReached(Exception):
    """More entities match than the configured limit; the answers so far were sent."""


class _CancelSeen(Exception):
    """A C-CANCEL seen while one row was being matched: the query ends where it is."""


class RowRecord:
    """One candidate entity's values: typed columns, computed attributes, stored header."""

    def __init__(
        self, typed: dict[str, Any], header: dict[str, Any] | None, computed: dict[str, Any]
    ) -> None:
        self.typed = typed
        self.header = header or {}
        self.computed = computed

    def values(self, keyword: str, tag: int) -> list[Any] | None:
        if keyword in self.computed:
            return list(self.computed[keyword])
        if keyword in self.typed:
            value = self.typed[keyword]
            return [] if value in (None, "") else [value]
        return json_values(self.header.get(f"{tag:08X}"))


class Finder:
    def __init__(
        self,
        engine: Engine,
        *,
        retrieve_ae_title: str,
        max_results: int,
        time_limit: float = 30.0,
        page_size: int = PAGE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.retrieve_ae_title = retrieve_ae_title
        self.max_results = max_results
        self.time_limit = time_limit
        self.page_size = page_size
        #: The time budget's clock (a test's own, to spend a budget without waiting).
        self.clock = clock

    # -- C-FIND ------------------------------------------------------------------------------

    def find(
        self,
        query: Query,
        cancelled: Callable[[], bool] = lambda: False,
        max_results: int | None = None,
        *,
        plain: bool = False,
    ) -> Iterator[Dataset]:
        """Yield one answer Identifier per match, page by page; stop early once
        ``cancelled()``; raise ResultLimitReached past the result limit (the lower of the
        server's and the caller's ``max_results``, the identity's own) and TimeLimitReached
        once the query has worked for ``time_limit`` seconds.

        ``plain``: answers of plain values are yielded as :class:`Answer` objects whose
        ``Dataset`` is left empty, for a caller that writes its own encoding from the plain
        values (QIDO-RS: filling a pydicom ``Dataset`` per match was most of its time)."""
        limit = self.max_results if max_results is None else min(self.max_results, max_results)
        needed = {c.keyword for c in query.constraints} | {e.keyword for e in query.requested}
        computed_keys = needed & COMPUTED
        need_header = any(
            (k not in COLUMNS and k not in COMPUTED) for k in needed
        ) or any(e.VR == "SQ" for e in query.requested)
        statement = self._select(query, need_header, computed_keys)
        # Looked up once per query, not once per match.
        requested = [(int(e.tag), e.keyword, e.VR) for e in query.requested]
        availability = "InstanceAvailability" in _requested_keywords(query)
        typed_keys = _typed_keys(query.level)
        budget = Budget(self.time_limit, self.clock)
        meter = Meter(functools.partial(_looked_at, budget, cancelled))
        sent = 0
        try:
            for page in pages(
                self.engine, statement, _TABLES[query.level].id, budget, self.page_size
            ):
                for row in page:
                    budget.check()
                    if cancelled():
                        return
                    mapping = row._mapping
                    typed = {k: mapping[k] for k in typed_keys}
                    header = mapping["header"] if need_header else None
                    computed = _computed_values(mapping, computed_keys)
                    record = RowRecord(typed, header, computed)
                    if not all(_checked(budget) and c.matches(record, meter)
                               for c in query.constraints):
                        continue
                    if sent >= limit:
                        raise ResultLimitReached(limit)
                    sent += 1
                    answer = self._answer(query, record, requested, availability, plain,
                                          meter)
                    budget.pause()  # the peer's reading is not the query's work
                    yield answer
                    budget.resume()
            # The last row's match may have spent the budget too: not a Success.
            budget.check()
        except _CancelSeen:
            return
        except SQLAlchemyError as exc:
            raise OutOfResources("index unavailable") from exc

    def _select(self, query: Query, need_header: bool, computed: set[str]) -> Select[Any]:
        level = query.level
        tables = [Patient, Study, Series, Instance][: level.depth + 1]
        statement = _base_select(level, need_header, frozenset(computed), self.engine.dialect.name)
        for constraint in query.constraints:
            predicate = _prefilter(constraint)
            if predicate is not None and COLUMNS[constraint.keyword].class_ in tables:
                statement = statement.where(predicate)
        return statement

    def _answer(
        self,
        query: Query,
        record: RowRecord,
        requested: list[tuple[int, str, str]],
        availability: bool,
        lazy: bool = False,
        meter: Meter = UNMETERED,
    ) -> Dataset:
        plain: dict[int, tuple[str, Any]] = {
            0x00080005: ("CS", UTF8),  # Specific Character Set
            0x00080052: ("CS", query.level.value),  # Query/Retrieve Level
            0x00080054: ("AE", self.retrieve_ae_title),  # Retrieve AE Title
        }
        for tag, keyword, vr in requested:
            value = _plain_value(tag, keyword, vr, record)
            if value is None:
                return self._answer_dataset(query, record, meter)
            plain[tag] = value
        if availability:
            plain[0x00080056] = ("CS", "ONLINE")
        return Answer.of(plain, fill=False if lazy else None)

    def _answer_dataset(
        self, query: Query, record: RowRecord, meter: Meter = UNMETERED
    ) -> Dataset:
        """The answer built with pydicom: for values that are not plain text or numbers."""
        answer = Dataset()
        answer.SpecificCharacterSet = UTF8
        answer.QueryRetrieveLevel = query.level.value
        answer.RetrieveAETitle = self.retrieve_ae_title
        sequences = {c.tag: c for c in query.constraints if c.kind is Kind.SEQUENCE}
        for element in query.requested:
            answer.add(self._value(element, record, sequences.get(int(element.tag)), meter))
        if "InstanceAvailability" in _requested_keywords(query):
            answer.InstanceAvailability = "ONLINE"
        return answer

    def _value(
        self,
        element: DataElement,
        record: RowRecord,
        sequence: Constraint | None = None,
        meter: Meter = UNMETERED,
    ) -> DataElement:
        tag, keyword = element.tag, element.keyword
        stored = record.header.get(f"{int(tag):08X}")
        if stored and element.VR == "SQ":
            # Outside the try below: the meter's TimeLimitReached must not be taken for a
            # value pydicom cannot read.
            stored = answered_sequence(element, stored, sequence, meter)
        if keyword in record.computed:
            return DataElement(tag, element.VR, record.computed[keyword] or None)
        if stored and keyword not in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            try:
                return Dataset.from_json({f"{int(tag):08X}": stored})[tag]
            except Exception:
                pass  # fall back to the typed value
        if keyword in record.typed and record.typed[keyword] not in (None, ""):
            value = record.typed[keyword]
            return DataElement(tag, element.VR, str(value) if element.VR != "SQ" else [])
        vr = element.VR if element.VR not in ("UN", None) else _dictionary_vr(int(tag))
        return DataElement(tag, vr, [] if vr == "SQ" else None)

    # -- C-MOVE / C-GET -----------------------------------------------------------------------

    def instances(self, query: Query) -> list[InstanceRef]:
        """Every instance under the entities a retrieve Identifier names."""
        statement = (
            select(
                *_REF_COLUMNS,
                *[col.label(k) for k, col in COLUMNS.items()],
            )
            .select_from(Patient)
            .join(Study, Study.patient_fk == Patient.id)
            .join(Series, Series.study_fk == Study.id)
            .join(Instance, Instance.series_fk == Series.id)
            .order_by(Study.id, Series.id, Instance.id)
        )
        for constraint in query.constraints:
            predicate = _prefilter(constraint)
            if predicate is not None:
                statement = statement.where(predicate)
        try:
            rows = read_index(self.engine, lambda conn: conn.execute(statement).all())
        except SQLAlchemyError as exc:
            raise OutOfResources("index unavailable") from exc
        found = []
        for row in rows:
            mapping = row._mapping
            record = RowRecord({k: mapping[k] for k in COLUMNS}, None, {})
            if all(c.matches(record) for c in query.constraints if c.keyword in COLUMNS):
                found.append(InstanceRef(*row[:_REF_WIDTH]))
        return found

    def instance(self, study: str, series: str, sop_instance: str) -> list[InstanceRef]:
        """The instance a retrieve Identifier naming all three UIDs (single values) finds,
        as :meth:`instances` finds it, by one indexed lookup whose statement is built once:
        a UI single-value match is exact equality (PS3.4 C.2.2.2.1; the unique keys are
        stored trimmed), which SQL decides alone. A WADO-RS retrieve of one instance."""
        uids = {"study": study, "series": series, "sop_instance": sop_instance}
        try:
            rows = read_index(self.engine, lambda conn: conn.execute(_ONE_INSTANCE, uids).all())
        except SQLAlchemyError as exc:
            raise OutOfResources("index unavailable") from exc
        return [InstanceRef(*row) for row in rows]

    def current(self, ref: InstanceRef) -> InstanceRef | None:
        """The index's row of ``ref``'s instance now, or None once it is no longer indexed:
        for a retrieve that found the object its match list named gone (the instance sent
        again meanwhile, ``archive/read.py``)."""
        uid = {"sop_instance": ref.sop_instance_uid}
        try:
            rows = read_index(self.engine, lambda conn: conn.execute(_CURRENT, uid).all())
        except SQLAlchemyError as exc:
            raise OutOfResources("index unavailable") from exc
        return InstanceRef(*rows[0]) if rows else None


_UNIQUE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")

#: :meth:`Finder.instance`'s statement, built (and compiled, by SQLAlchemy's cache) once.
_ONE_INSTANCE = (
    select(*_REF_COLUMNS)
    .select_from(Patient)  # the same joins as Finder.instances
    .join(Study, Study.patient_fk == Patient.id)
    .join(Series, Series.study_fk == Study.id)
    .join(Instance, Instance.series_fk == Series.id)
    .where(Study.study_instance_uid == bindparam("study"),
           Series.series_instance_uid == bindparam("series"),
           Instance.sop_instance_uid == bindparam("sop_instance"))
    .order_by(Instance.id)
)

#: :meth:`Finder.current`'s statement (the SOP Instance UID is unique in the index).
_CURRENT = (
    select(*_REF_COLUMNS)
    .select_from(Instance)
    .join(Series, Instance.series_fk == Series.id)
    .join(Study, Series.study_fk == Study.id)
    .join(Patient, Study.patient_fk == Patient.id)
    .where(Instance.sop_instance_uid == bindparam("sop_instance"))
)


@functools.lru_cache(maxsize=256)
def _base_select(
    level: Level, need_header: bool, computed: frozenset[str], dialect: str
) -> Select[Any]:
    """The columns, joins and order of a query at ``level``, without its predicates.

    Built once per shape: constructing the correlated subqueries of the computed attributes
    with SQLAlchemy took longer than PostgreSQL took to run the whole statement. A
    ``Select`` is immutable (``where`` returns a new one), so the cached one is shared."""
    tables = [Patient, Study, Series, Instance][: level.depth + 1]
    columns: list[Any] = [_TABLES[level].id.label("entity_id")]
    columns += [col.label(k) for k, col in COLUMNS.items() if col.class_ in tables]
    if need_header:
        columns.append(_header_of(level).label("header"))
    for key in sorted(computed):
        column = _computed_column(key, level, dialect)
        if column is not None:
            columns.append(column.label(key))
    statement = select(*columns).select_from(Patient)
    if Study in tables:
        statement = statement.join(Study, Study.patient_fk == Patient.id)
    if Series in tables:
        statement = statement.join(Series, Series.study_fk == Study.id)
    if Instance in tables:
        statement = statement.join(Instance, Instance.series_fk == Series.id)
    return statement.order_by(_TABLES[level].id)


def _typed_keys(level: Level) -> tuple[str, ...]:
    """The keywords with a typed column selected at ``level`` (see :func:`_base_select`)."""
    tables = [Patient, Study, Series, Instance][: level.depth + 1]
    return tuple(k for k, col in COLUMNS.items() if col.class_ in tables)


def _plain_value(tag: int, keyword: str, vr: str, record: RowRecord) -> tuple[str, Any] | None:
    """``(VR, value)`` of one requested key as :meth:`Finder._value` would answer it, when
    that value is plain; None when only pydicom can build it."""
    if vr not in PLAIN_VRS:
        return None
    if keyword in record.computed:
        return vr, record.computed[keyword] or None
    stored = record.header.get(f"{tag:08X}")
    if stored and keyword not in _UNIQUE_UIDS:
        if stored.get("vr") != vr or set(stored) - {"vr", "Value"}:
            return None
        values = stored.get("Value")
        if values is None:
            return vr, None
        if vr == "PN":
            if not all(isinstance(v, dict) and set(v) == {"Alphabetic"} for v in values):
                return None
            values = [v["Alphabetic"] for v in values]
        elif vr == "IS":
            if not all(type(v) is int for v in values):
                return None
            values = [str(v) for v in values]
        elif vr in ("US", "UL", "SS", "SL"):
            if not all(type(v) is int for v in values):
                return None
        elif not all(isinstance(v, str) for v in values):
            return None
        return vr, values
    if keyword in record.typed and record.typed[keyword] not in (None, ""):
        return vr, str(record.typed[keyword])
    return vr, None


def _requested_keywords(query: Query) -> set[str]:
    return {e.keyword for e in query.requested}


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag)).split(" ")[0]
    except KeyError:
        return "UN"


def _header_of(level: Level) -> Any:
    """The stored header of the first instance under the current row's entity."""
    if level is Level.IMAGE:
        return Instance.header
    first = select(Instance.header)
    if level is Level.SERIES:
        first = first.where(Instance.series_fk == Series.id).correlate(Series)
    elif level is Level.STUDY:
        first = (
            first.join(Series, Instance.series_fk == Series.id)
            .where(Series.study_fk == Study.id)
            .correlate(Study)
        )
    else:
        first = (
            first.join(Series, Instance.series_fk == Series.id)
            .join(Study, Series.study_fk == Study.id)
            .where(Study.patient_fk == Patient.id)
            .correlate(Patient)
        )
    return first.order_by(Instance.id).limit(1).scalar_subquery()


#: Separator of the aggregated multi-valued computed attributes (never inside a CS or UI).
_SEPARATOR = ","


def _computed_column(key: str, level: Level, dialect: str) -> Any:
    """A correlated subquery computing ``key`` for the current row's entity, or None when
    the attribute does not exist at ``level`` (it is then answered empty)."""
    instances_of_series = select(func.count(Instance.id)).join(
        Series, Instance.series_fk == Series.id
    )
    if level is Level.PATIENT and key.startswith("NumberOfPatientRelated"):
        if key == "NumberOfPatientRelatedStudies":
            counted = select(func.count(Study.id))
        elif key == "NumberOfPatientRelatedSeries":
            counted = select(func.count(Series.id)).join(Study, Series.study_fk == Study.id)
        else:
            counted = instances_of_series.join(Study, Series.study_fk == Study.id)
        return counted.where(Study.patient_fk == Patient.id).correlate(Patient).scalar_subquery()
    if level is Level.STUDY:
        if key == "NumberOfStudyRelatedSeries":
            counted = select(func.count(Series.id)).where(Series.study_fk == Study.id)
            return counted.correlate(Study).scalar_subquery()
        if key == "NumberOfStudyRelatedInstances":
            counted = instances_of_series.where(Series.study_fk == Study.id)
            return counted.correlate(Study).scalar_subquery()
        if key in ("ModalitiesInStudy", "SOPClassesInStudy"):
            if key == "ModalitiesInStudy":
                source = select(Series.modality.label("v")).where(Series.study_fk == Study.id)
            else:
                source = (
                    select(Instance.sop_class_uid.label("v"))
                    .join(Series, Instance.series_fk == Series.id)
                    .where(Series.study_fk == Study.id)
                )
            distinct_values = source.distinct().correlate(Study).subquery()
            aggregate = (
                func.string_agg(distinct_values.c.v, _SEPARATOR)
                if dialect == "postgresql"
                else func.group_concat(distinct_values.c.v, _SEPARATOR)
            )
            return select(aggregate).select_from(distinct_values).scalar_subquery()
    if level is Level.SERIES and key == "NumberOfSeriesRelatedInstances":
        counted = select(func.count(Instance.id)).where(Instance.series_fk == Series.id)
        return counted.correlate(Series).scalar_subquery()
    return None


def _computed_values(row: Any, keys: set[str]) -> dict[str, list[Any]]:
    values: dict[str, list[Any]] = {}
    for key in keys:
        if key not in row:
            continue
        value = row[key]
        if key in ("ModalitiesInStudy", "SOPClassesInStudy"):
            values[key] = sorted(v for v in (value or "").split(_SEPARATOR) if v)
        else:
            values[key] = [str(value or 0)]
    return values


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _checked(budget: Budget) -> bool:
    """The budget checked before each key of a row is matched: one row can hold a MiB of
    long values, each key hundreds of alternatives."""
    budget.check()
    return True


def _looked_at(budget: Budget, cancelled: Callable[[], bool]) -> None:
    """The budget and C-CANCEL, looked at every few comparisons inside one row's match (one
    key against a long stored sequence is millions of them)."""
    budget.check()
    if cancelled():
        raise _CancelSeen


def _prefilter(constraint: Constraint) -> Any:
    """An indexable predicate selecting a superset of the matches, or None."""
    if constraint.keyword not in _TEXT_COLUMNS:
        return None
    column = COLUMNS[constraint.keyword]
    kind, vr = constraint.kind, constraint.vr
    if kind is Kind.LIST:
        parts = [_prefilter(alt) for alt in constraint.alternatives]
        if any(p is None for p in parts):
            return None
        if vr == "UI":
            return column.in_(constraint.values)
        return or_(*parts)
    if kind is Kind.EMPTY:
        return column == ""
    if kind is Kind.RANGE:
        if vr != "DA":
            return None
        return and_(column != "", column >= constraint.low, column <= constraint.high)
    if kind not in (Kind.SINGLE, Kind.WILDCARD):
        return None
    if constraint.groups:
        # The column holds the groups joined by '=': each group the key names is in it.
        parts = [p for p in (_prefilter(g) for g in constraint.groups if g) if p is not None]
        return and_(*parts) if parts else None
    value = constraint.values[0]
    if vr == "PN":
        # Any component group may match, case-insensitively: a contains-search on the
        # literal text, only where the database folds case the way Python does (ASCII).
        literal = value.replace("*", "%").replace("?", "_").rstrip("^ ")
        if not literal.isascii() or not literal.strip("%_"):
            return None
        return column.ilike(f"%{_like(value.rstrip('^ '))}%", escape="\\")
    if kind is Kind.WILDCARD:
        return column.like(_like(value), escape="\\")
    if vr in ("TM", "DT"):
        return None
    return column == value
