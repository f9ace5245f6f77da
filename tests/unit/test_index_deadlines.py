"""The server's index deadlines on PostgreSQL (``engine.LOCK_TIMEOUT_MS``): another session
holding a lock on ``instances`` (LOCK TABLE, VACUUM FULL, a migration) gets a C-STORE, and a
retrieve's read, answered 0xA700 "index unavailable" once the deadline passes, nothing stored
and no retry waiting it out again; before, they waited as long as the lock was held.

The deadline is lowered to a fraction of a second here; the lock is released after a
generous bound, only so that a test without the deadline fails instead of hanging."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import psycopg
import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine

from mimic_server.dimse.store import handle_store
from mimic_server.errors import OutOfResources
from mimic_server.index import engine as index_engine
from mimic_server.index import repository, schema
from mimic_server.index.engine import create_index_engine
from mimic_server.index.repository import SqlIndex
from mimic_server.query.finder import Finder
from mimic_server.query.identifier import parse
from mimic_server.query.keys import Model
from mimic_server.security.policy import Policy
from mimic_server.storage.memory import MemoryStore
from tests import database
from tests.data import ct_small
from tests.unit.test_store_handler import _event, _status

pytestmark = pytest.mark.timeout(120)

#: A bound on a hang only (the deadline is 0.3 s): the lock is released then, whatever.
_HANG = 30.0


@pytest.fixture
def pg_engine(
    postgres_server: str, monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Engine, str]]:
    monkeypatch.setattr(index_engine, "LOCK_TIMEOUT_MS", 300)
    monkeypatch.setattr(index_engine, "STATEMENT_TIMEOUT_MS", 2000)
    with database.fresh_database(postgres_server) as url:
        engine = create_index_engine(url, deadlines=True)
        schema.upgrade(engine)
        yield engine, url.replace("postgresql+psycopg://", "postgresql://")
        engine.dispose()


def _locked(plain_url: str, released: threading.Event) -> threading.Event:
    """``instances`` locked ACCESS EXCLUSIVE by another session until ``released`` is set
    (or ``_HANG`` passed); returns the event set once the lock is held."""
    held = threading.Event()

    def hold() -> None:
        with psycopg.connect(plain_url) as locker:
            locker.execute("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
            held.set()
            released.wait(_HANG)
            locker.rollback()

    threading.Thread(target=hold, daemon=True).start()
    assert held.wait(10)
    return held


def _ct(sop: str, series: str) -> Dataset:
    ds = pydicom.dcmread(ct_small())
    del ds.file_meta
    ds.SOPInstanceUID, ds.SeriesInstanceUID = sop, series
    return ds


def _in_thread(call: Any) -> dict[str, Any]:
    """``call()`` on a thread of its own (a handler thread); its answer once it returned."""
    answer: dict[str, Any] = {}

    def run() -> None:
        try:
            answer["value"] = call()
        except BaseException as exc:  # handed to the test
            answer["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    answer["thread"] = thread
    return answer


@pytest.mark.parametrize("group_commit", [True, False])
def test_c_store_on_a_locked_table_is_refused_at_the_deadline(
    pg_engine: tuple[Engine, str], group_commit: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, plain = pg_engine
    index = SqlIndex(engine, group_commit=group_commit)
    store = MemoryStore()
    first = _ct("1.2.826.0.1.3680043.8.498.901.1", "1.2.826.0.1.3680043.8.498.900.1")
    assert _status(handle_store(_event(first), store, index, Policy("MIMIC"))) == 0x0000
    retries: list[float] = []
    monkeypatch.setattr(repository, "time", SimpleNamespace(
        monotonic=time.monotonic, sleep=retries.append))
    released = threading.Event()
    _locked(plain, released)
    try:
        # Of a known series (one statement that commits itself, with group commit), of a new
        # series (a transaction), and several at once (one batch, or transactions side by side).
        stores = [
            _ct(f"1.2.826.0.1.3680043.8.498.901.{n}", f"1.2.826.0.1.3680043.8.498.900.{series}")
            for n, series in ((2, 1), (3, 2), (4, 1), (5, 1), (6, 3))
        ]
        answers = [_in_thread(lambda ds=ds: handle_store(_event(ds), store, index,
                                                         Policy("MIMIC")))
                   for ds in stores]
        for answer in answers:
            answer["thread"].join(_HANG)
            assert not answer["thread"].is_alive(), "still waiting on the locked table"
    finally:
        released.set()
    for answer in answers:
        assert "error" not in answer, answer.get("error")
        assert _status(answer["value"]) == 0xA700
        assert answer["value"].ErrorComment == "index unavailable"
    assert retries == []  # a cancelled statement is not waited out again
    assert index.count_instances() == 1 and len(store.objects) == 1  # nothing stored
    index.close()


def test_retrieve_read_on_a_locked_table_is_index_unavailable(
    pg_engine: tuple[Engine, str],
) -> None:
    engine, plain = pg_engine
    finder = Finder(engine, retrieve_ae_title="MIMIC", max_results=1000)
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.900"
    query = parse(ds, Model.STUDY_ROOT, relational=False, retrieve=True)
    released = threading.Event()
    _locked(plain, released)
    try:
        answer = _in_thread(lambda: finder.instances(query))
        answer["thread"].join(_HANG)
        assert not answer["thread"].is_alive(), "still waiting on the locked table"
    finally:
        released.set()
    # OutOfResources: a C-GET or C-MOVE answers 0xA700, WADO-RS 503 (docs/conformance.md).
    assert isinstance(answer.get("error"), OutOfResources)


def test_maintenance_engines_have_no_deadline(pg_engine: tuple[Engine, str]) -> None:
    """``mimic db upgrade``, ``mimic reconcile``: their statements wait as long as it takes."""
    _, plain = pg_engine
    engine = create_index_engine(plain.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "0"
    engine.dispose()
