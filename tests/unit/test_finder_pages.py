"""The C-FIND finder reads its candidates in pages and holds no connection between them.

A C-FIND whose peer stops reading must not keep a pooled connection (nor, on SQLite, a read
snapshot): with a pool of one connection, a store still succeeds while the answer stream is
held open. Paged answers are exactly the unpaged ones. A query that works past its time
budget ends with TimeLimitReached.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import QueuePool

from mimic_server.index import schema
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.engine import create_index_engine
from mimic_server.index.repository import SqlIndex
from mimic_server.query.finder import Finder
from mimic_server.query.identifier import parse
from mimic_server.query.keys import Model
from mimic_server.query.pages import Budget, TimeLimitReached, _read
from tests import database
from tests.conftest import BACKENDS
from tests.data import ct_small

pytestmark = pytest.mark.timeout(120)

PATIENTS = 25
UID_ROOT = "1.2.826.0.1.3680043.8.498.10"


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An index of 25 patients (one study, one instance each), on a pool of ONE connection."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
        yield from _loaded(url)
        return
    with database.fresh_database(request.getfixturevalue("postgres_server")) as url:
        yield from _loaded(url)


def _loaded(url: str) -> Iterator[Engine]:
    setup = create_index_engine(url)
    schema.upgrade(setup)
    for n in range(PATIENTS):
        _store(SqlIndex(setup), n)
    setup.dispose()
    # One connection, and a store waits at most 5 s for it (then fails the test).
    engine = create_engine(url, poolclass=QueuePool, pool_size=1, max_overflow=0, pool_timeout=5)
    yield engine
    engine.dispose()


def _store(index: SqlIndex, n: int) -> None:
    store_header(index, n, UID_ROOT, PatientID=f"P{n:03d}", PatientName=f"{'A' * 28}B^X{n:02d}")


def store_header(index: SqlIndex, n: int, root: str, **values: str) -> None:
    """Index the CT header with ``values`` set, as instance ``n`` of its own study and
    series under ``root`` (no object: the query tests read the index alone)."""
    ds = copy.deepcopy(pydicom.dcmread(ct_small(), stop_before_pixels=True))
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID = f"{root}.1.{n}"
    ds.SeriesInstanceUID = f"{root}.2.{n}"
    ds.SOPInstanceUID = f"{root}.3.{n}"
    index.upsert_instance(
        InstanceAttributes.from_header(ds), transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key=f"k/{n}", sha256="0" * 64, size=1, received_from="test",
    )


def _study_query(**keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    ds.NumberOfStudyRelatedInstances = ""
    ds.InstitutionName = ""  # from the stored header
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _finder(engine: Engine, **options: float) -> Finder:
    return Finder(engine, retrieve_ae_title="MIMIC", max_results=1000, **options)  # type: ignore[arg-type]


def _answers(finder: Finder, identifier: Dataset) -> list[bytes]:
    query = parse(identifier, Model.STUDY_ROOT, relational=False)
    # _as_dataset: with the fence installed (by an earlier test in this process) answers
    # stay empty Datasets for the patched encoder; their plain values are what counts.
    return [repr(sorted((str(e.tag), str(e.value)) for e in _as_dataset(a))).encode()
            for a in finder.find(query)]


def test_no_connection_is_held_while_the_peer_reads(engine: Engine) -> None:
    query = parse(_study_query(), Model.STUDY_ROOT, relational=False)
    answers = _finder(engine, page_size=4).find(query)
    next(answers)  # the peer has one answer and stops reading
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    _store(SqlIndex(engine), PATIENTS)  # a C-STORE meanwhile gets the only connection
    rest = list(answers)
    assert len(rest) == PATIENTS  # 24 more, and the new study (its id is past the last page)


def test_pages_answer_exactly_what_one_read_answers(engine: Engine) -> None:
    for keys in ({}, {"PatientName": "*x1?"}, {"PatientName": "a*b^x0*"}):
        whole = _answers(_finder(engine, page_size=10_000), _study_query(**keys))
        assert whole
        for size in (1, 3, 7, PATIENTS):
            assert _answers(_finder(engine, page_size=size), _study_query(**keys)) == whole


def test_adversarial_wildcards_pass_the_index_prefilter_and_complete(engine: Engine) -> None:
    # "*A" 14 times then "*B": every stored name contains B (the SQL prefilter passes them
    # all), none ends with it: a backtracking matcher tried ~10^8 ways per name.
    key = "*A" * 14 + "*B"
    assert _answers(_finder(engine), _study_query(PatientName=key)) == []
    assert len(_answers(_finder(engine), _study_query(PatientName=key + "*"))) == PATIENTS


def test_time_budget_ends_the_query(engine: Engine) -> None:
    query = parse(_study_query(), Model.STUDY_ROOT, relational=False)
    finder = _finder(engine, time_limit=1e-9)
    with pytest.raises(TimeLimitReached):
        list(finder.find(query))
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_budget_longer_than_postgresqls_largest_statement_timeout_answers(
    engine: Engine,
) -> None:
    """35 days of budget (no upper bound is set on it) was sent to PostgreSQL as a
    statement_timeout past its 32-bit range: every C-FIND failed 0xA700 "index unavailable"
    there, while SQLite answered."""
    query = parse(_study_query(), Model.STUDY_ROOT, relational=False)
    assert len(list(_finder(engine, time_limit=3_000_000.0).find(query))) == PATIENTS


def test_budget_counts_work_not_the_peers_reading() -> None:
    ticks = itertools.count()
    budget = Budget(10, clock=lambda: float(next(ticks)))  # each look at the clock: 1 s
    budget.pause()  # spent 1
    assert budget.remaining() == 9  # while paused, time does not run
    budget.resume()
    budget.check()  # 9 - 1
    with pytest.raises(TimeLimitReached):
        for _ in range(10):
            budget.check()


def test_cancel_stops_between_candidates(engine: Engine) -> None:
    query = parse(_study_query(PatientName="nobody*"), Model.STUDY_ROOT, relational=False)
    looked = itertools.count()
    # No candidate matches: without the check, the query would read every page.
    assert list(_finder(engine, page_size=2).find(query, lambda: next(looked) >= 3)) == []


def test_an_index_read_longer_than_the_budget_is_interrupted(engine: Engine) -> None:
    # A statement that would count for minutes: the database stops it when the budget is
    # spent (SQLite progress handler, PostgreSQL statement_timeout), not at its end.
    endless = text(
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 4000000000)"
        " SELECT count(*) FROM c"
    )
    with pytest.raises(TimeLimitReached):
        _read(engine, endless, Budget(0.2))  # type: ignore[arg-type]
    with engine.connect() as conn:  # the connection is usable again, without the deadline
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


def test_queries_of_one_shape_never_share_their_predicates(engine: Engine) -> None:
    # The columns, joins and subqueries of a shape are built once and shared: each query
    # must still be answered by its own match keys only.
    finder = _finder(engine)
    for n in (1, 2, 3):
        answers = _answers(finder, _study_query(PatientID=f"P{n:03d}"))
        assert len(answers) == 1 and f"X{n:02d}".encode() in answers[0], answers
    assert len(_answers(finder, _study_query())) == PATIENTS


def _as_dataset(answer: Dataset) -> Dataset:
    return answer.to_dataset() if hasattr(answer, "_mimic_plain") else answer  # type: ignore[attr-defined, no-any-return]


def test_plain_answers_hold_what_the_dataset_answers_hold(engine: Engine) -> None:
    query = parse(_study_query(PatientName="a*"), Model.STUDY_ROOT, relational=False)
    finder = _finder(engine)
    usual = [_as_dataset(a).to_json_dict() for a in finder.find(query)]
    plain_answers = list(finder.find(query, plain=True))
    assert all(len(a) == 0 for a in plain_answers if hasattr(a, "_mimic_plain"))
    assert [_as_dataset(a).to_json_dict() for a in plain_answers] == usual
    assert len(usual) == PATIENTS
