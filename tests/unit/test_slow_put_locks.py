"""A slow put must not hold the new patient / study / series rows of its instance locked
(PostgreSQL, ``archive.ingest.keep`` overlapping the put with the index transaction).

The first instance of a new study whose put is slow (a large object to Blob Storage) ran
its index transaction beside the put: the patient, study and series rows were inserted, then
the transaction waited for the put before its commit, holding their locks. Every other
instance of that new study (another association, another worker, another replica) waited on
those rows' inserts and was refused 0xA700 at the lock deadline, its batch-mates with it."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Iterator

import pydicom
import pytest
from sqlalchemy import Engine, select

from mimic_server.archive.ingest import ReceivedObject, keep
from mimic_server.index import engine as index_engine
from mimic_server.index import schema
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.engine import create_index_engine
from mimic_server.index.models import Instance, Series
from mimic_server.index.repository import SqlIndex
from mimic_server.storage.memory import MemoryStore
from tests import database
from tests.data import ct_small
from tests.support import wait_for

pytestmark = pytest.mark.timeout(120)

PREFIX = "1.2.826.0.1.3680043.8.498.94."


@pytest.fixture
def pg_engine(postgres_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setattr(index_engine, "LOCK_TIMEOUT_MS", 1000)
    with database.fresh_database(postgres_server) as url:
        engine = create_index_engine(url, deadlines=True)
        schema.upgrade(engine)
        yield engine
        engine.dispose()


class _SlowStore(MemoryStore):
    """Puts of the keys under ``slow`` wait until ``go`` is set (a large object's upload)."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = "none"
        self.started = threading.Event()
        self.go = threading.Event()

    def put(self, key: str, chunks: Iterable[bytes | memoryview], sha256: str | None) -> int:
        if self.slow in key:
            self.started.set()
            self.go.wait(30)
        return super().put(key, chunks, sha256)


def _received(series: str, sop: str) -> tuple[ReceivedObject, InstanceAttributes]:
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    ds.StudyInstanceUID = f"{PREFIX}1"
    ds.SeriesInstanceUID = f"{PREFIX}2.{series}"
    ds.SOPInstanceUID = f"{PREFIX}3.{sop}"
    received = ReceivedObject(b"meta", memoryview(b"data"), "1.2.840.10008.1.2.1", ds,
                              "0" * 64)
    return received, InstanceAttributes.from_header(ds)


@pytest.mark.parametrize("series", ["1", "2"], ids=["same series", "another series"])
def test_a_slow_put_leaves_its_new_study_to_the_others(pg_engine: Engine,
                                                       series: str) -> None:
    """The first object of a new study, its put held: another C-STORE into that study
    (``LOCK_TIMEOUT_MS`` 1 s here) waited on the new rows held uncommitted through the put
    and was refused 0xA700; it now commits while the put still waits."""
    store = _SlowStore()
    index = SqlIndex(pg_engine)
    store.slow = f"{PREFIX}3.1"
    thread, outcome = _in_background(lambda: keep(store, index, *_received("1", "1"), "t"))
    try:
        assert store.started.wait(10)
        assert wait_for(lambda: _waiting_for_its_put(thread), timeout=10)
        keep(store, index, *_received(series, "2"), "t")  # refused 0xA700 before the fix
        assert not store.go.is_set() and thread.is_alive()  # while the put still waits
    finally:
        store.go.set()
        thread.join(30)
    assert outcome == [None]
    assert index.get_instance(f"{PREFIX}3.1") is not None
    assert index.get_instance(f"{PREFIX}3.2") is not None
    index.close()


def _in_background(
    call: Callable[[], object],
) -> tuple[threading.Thread, list[BaseException | None]]:
    """``call`` in a thread of its own, started; its outcome (None, or what it raised) in
    the list once it is done."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _waiting_for_its_put(thread: threading.Thread) -> bool:
    """Whether ``thread``'s index transaction waits for its object's put (``keep``'s
    ``durable`` or ``durable_first``)."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name in ("durable", "durable_first"):
            return True
        frame = frame.f_back
    return False


def test_a_slow_resend_leaves_the_series_it_empties_to_the_others(pg_engine: Engine) -> None:
    """An instance sent again under another series (its old series' last) by a process that
    has not cached the new one: its put overlaps the transaction, which removes the old
    series row, as it is left empty. Removed before the put was done, that row stayed locked
    through the put, and a C-STORE into the old series meanwhile waited on it, refused
    0xA700 at the lock deadline. The removal waits for the put, as new rows do; the store
    goes first, and the old series is kept with it."""
    store = _SlowStore()
    index, other = SqlIndex(pg_engine), SqlIndex(pg_engine)  # two processes' indexes
    for series, sop in (("1", "1"), ("2", "9")):
        keep(store, index, *_received(series, sop), "t")
    store.slow = f"{PREFIX}2.2/"  # the re-send's object, under its new series
    moved, moved_attrs = _received("2", "1")
    thread, outcome = _in_background(lambda: keep(store, other, moved, moved_attrs, "t"))
    try:
        assert store.started.wait(10)
        assert wait_for(lambda: _waiting_for_its_put(thread), timeout=10)
        keep(store, index, *_received("1", "3"), "t")  # refused 0xA700 before the fix
        assert not store.go.is_set() and thread.is_alive()  # while the put still waits
    finally:
        store.go.set()
        thread.join(30)
    assert outcome == [None]
    with pg_engine.connect() as conn:
        filed = dict(conn.execute(
            select(Instance.sop_instance_uid, Series.series_instance_uid)
            .join(Series, Instance.series_fk == Series.id)).all())
    assert filed == {f"{PREFIX}3.1": f"{PREFIX}2.2", f"{PREFIX}3.9": f"{PREFIX}2.2",
                     f"{PREFIX}3.3": f"{PREFIX}2.1"}
    index.close()
    other.close()
