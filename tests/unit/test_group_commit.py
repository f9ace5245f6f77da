"""Group commit of concurrent index writes (``index/group_commit.py``), on SQLite and PostgreSQL.

Batches are made deterministic rather than hoped for: the first caller's commit is held at the
``commit`` event until every other caller is queued behind it, so the next transaction carries
all of them. The same hold shows the durability rule: while a commit is held, no caller whose
row it holds has returned (no C-STORE answered Success).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import psycopg
import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Connection, bindparam, event, func, select, text
from sqlalchemy.exc import OperationalError

from mimic_server.dimse.store import handle_store
from mimic_server.errors import HierarchyConflict, OutOfResources
from mimic_server.index import group_commit
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.audit_table import AuditTable
from mimic_server.index.engine import create_index_engine
from mimic_server.index.models import AuditEvent, Instance, Series, Study
from mimic_server.index.repository import SqlIndex, _Filed, _filed_as
from mimic_server.security.policy import Policy
from mimic_server.storage.memory import MemoryStore
from tests.data import ct_small
from tests.support import wait_for
from tests.unit.test_store_handler import _event, _status

PREFIX = "1.2.826.0.1.3680043.8.498.77."
COMMON = {"transfer_syntax_uid": "1.2.840.10008.1.2.1", "sha256": "0" * 64, "size": 1,
          "received_from": "t"}


def _dataset(n: int, series: int = 0) -> Dataset:
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    ds.SeriesInstanceUID = f"{PREFIX}1.{series}"
    ds.SOPInstanceUID = f"{PREFIX}2.{n}"
    return ds


def _attrs(n: int, series: int = 0) -> InstanceAttributes:
    return InstanceAttributes.from_header(_dataset(n, series))


def _audit_entry(n: int) -> Any:
    return SimpleNamespace(
        when=datetime.now(UTC), event_code="110104", event_type=None, outcome=0,
        identity="t", trust_name=None, calling_ae="CT", user=None, studies=(f"n{n}",),
        xml="<AuditMessage/>",
    )


def _audited(conn: Connection) -> None:
    """An audit row in the caller's transaction, like a C-STORE's in the PostgreSQL setup."""
    AuditTable(conn.engine).write_in(conn, _audit_entry(0))


def _rows(index: SqlIndex, model: Any) -> int:
    with index.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


class _Hold:
    """Holds the next commit of ``engine`` at its ``commit`` event until ``release``."""

    def __init__(self, index: SqlIndex) -> None:
        self.engine = index.engine
        self.reached = threading.Event()
        self.released = threading.Event()
        self.fail: Exception | None = None
        self._armed = True
        event.listen(self.engine, "commit", self._on_commit)

    def _on_commit(self, _conn: Any) -> None:
        if not self._armed:
            return
        self._armed = False
        self.reached.set()
        assert self.released.wait(60), "the held commit was never released"
        if self.fail is not None:
            raise self.fail

    def remove(self) -> None:
        self.released.set()
        event.remove(self.engine, "commit", self._on_commit)


class _Callers:
    """Threads that each run one call and keep its own outcome."""

    def __init__(self) -> None:
        self.threads: dict[int, threading.Thread] = {}
        self.results: dict[int, Any] = {}
        self.errors: dict[int, BaseException] = {}
        self.returned: list[int] = []
        self._lock = threading.Lock()

    def start(self, n: int, call: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                value = call()
                with self._lock:
                    self.results[n] = value
            except BaseException as exc:
                with self._lock:
                    self.errors[n] = exc
            with self._lock:
                self.returned.append(n)

        self.threads[n] = threading.Thread(target=run, daemon=True)
        self.threads[n].start()

    def join(self) -> None:
        for t in self.threads.values():
            t.join(60)
            assert not t.is_alive()


@contextmanager
def _batched(index: SqlIndex, first: Callable[[], Any], rest: dict[int, Callable[[], Any]],
             fail: Exception | None = None) -> Iterator[_Callers]:
    """Caller 0 runs ``first`` and its commit is held until every caller of ``rest`` waits
    behind it; then all go (the held commit fails with ``fail`` if given). Yields the callers
    after all have returned."""
    assert index.committer is not None
    index.committer.in_flight = 1  # PostgreSQL's second batch would not queue behind the hold
    # The leader begins its transaction before it takes its batch, as on SQLite, so that
    # caller 0 is in a transaction whose commit can be held: a lone C-STORE into a known
    # series on PostgreSQL is one statement that commits itself, with no commit to hold.
    index.committer._begins_first = True
    hold = _Hold(index)
    hold.fail = fail
    callers = _Callers()
    try:
        callers.start(0, first)
        assert hold.reached.wait(30)
        for n, call in rest.items():
            callers.start(n, call)
        assert wait_for(lambda: index.committer.waiting == len(rest), timeout=30)
        # The durability rule: the commit that holds caller 0's row has not happened, so
        # caller 0 has not returned; nor has anyone queued behind it.
        assert callers.returned == []
        hold.released.set()
        callers.join()
    finally:
        hold.remove()
    yield callers


def test_concurrent_callers_share_a_commit_and_each_gets_its_own_result(
    index: SqlIndex,
) -> None:
    for n in range(0, 24, 3):  # every third instance is already stored: its key comes back
        index.upsert_instance(_attrs(n), object_key=f"old/{n}", **COMMON)
    before = index.committer.batches if index.committer else 0

    def upsert(n: int) -> Callable[[], Any]:
        return lambda: index.upsert_instance(
            _attrs(n, n % 2), object_key=f"new/{n}", in_transaction=_audited, **COMMON)

    with _batched(index, upsert(0), {n: upsert(n) for n in range(1, 24)}) as callers:
        pass
    assert not callers.errors, callers.errors
    assert callers.results == {n: f"old/{n}" if n % 3 == 0 else None for n in range(24)}
    assert index.committer is not None
    assert index.committer.batches - before == 2 and index.committer.largest_batch == 23
    for n in range(24):
        stored = index.get_instance(f"{PREFIX}2.{n}")
        assert stored is not None and stored.object_key == f"new/{n}"
    assert _rows(index, Instance) == 24 and _rows(index, AuditEvent) == 24


def test_one_bad_instance_fails_alone_and_takes_its_audit_row_with_it(
    index: SqlIndex,
) -> None:
    def bad(conn: Connection) -> None:
        _audited(conn)  # written, then rolled back with the instance
        conn.execute(text("SELECT no_such_column FROM instances"))

    def upsert(n: int) -> Callable[[], Any]:
        return lambda: index.upsert_instance(
            _attrs(n), object_key=f"k/{n}", in_transaction=bad if n == 5 else _audited,
            **COMMON)

    with _batched(index, upsert(0), {n: upsert(n) for n in range(1, 10)}) as callers:
        pass
    assert set(callers.errors) == {5}
    assert isinstance(callers.errors[5], OutOfResources)
    assert callers.results == {n: None for n in range(10) if n != 5}
    assert index.get_instance(f"{PREFIX}2.5") is None
    assert _rows(index, Instance) == 9 and _rows(index, AuditEvent) == 9


def test_a_transient_failure_in_a_batch_is_retried_alone(index: SqlIndex) -> None:
    """A stale series id in the cache fails that instance's insert (an IntegrityError, which
    is transient): the batch is written again without it, and its retry succeeds."""
    index.upsert_instance(_attrs(100, series=7), object_key="seed", **COMMON)

    def upsert(n: int) -> Callable[[], Any]:
        return lambda: index.upsert_instance(_attrs(n, series=7 if n == 3 else 0),
                                             object_key=f"k/{n}", **COMMON)

    with index._cache_lock:
        stale = _attrs(3, series=7)
        index._series_ids[_filed_as(stale)] = _Filed(987654, stale.patient_key)  # not its row
    with _batched(index, upsert(0), {n: upsert(n) for n in range(1, 6)}) as callers:
        pass
    assert not callers.errors, callers.errors
    assert _rows(index, Instance) == 7
    stored = index.get_instance(f"{PREFIX}2.3")
    assert stored is not None and stored.object_key == "k/3"


def test_a_hierarchy_conflict_in_a_batch_fails_that_caller_alone(index: SqlIndex) -> None:
    """Two callers of one batch name the same new series under two studies: the first in
    the batch files it, the other is refused (0xC003, not retried), and the rest of the
    batch is written again and committed."""
    def upsert(n: int) -> Callable[[], Any]:
        ds = _dataset(n, series=9 if n in (2, 4) else 0)
        if n == 4:
            ds.StudyInstanceUID = f"{PREFIX}3.4"
        attrs = InstanceAttributes.from_header(ds)
        return lambda: index.upsert_instance(attrs, object_key=f"k/{n}",
                                             in_transaction=_audited, **COMMON)

    with _batched(index, upsert(0), {n: upsert(n) for n in range(1, 6)}) as callers:
        pass
    assert index.committer is not None and index.committer.largest_batch == 5
    assert list(callers.errors) == [4] and isinstance(callers.errors[4], HierarchyConflict)
    assert callers.results == {n: None for n in range(6) if n != 4}
    assert index.get_instance(f"{PREFIX}2.4") is None
    assert _rows(index, Instance) == 5 and _rows(index, AuditEvent) == 5


def test_a_conflict_with_rows_that_never_commit_is_judged_again(index: SqlIndex) -> None:
    """In one batch, caller 1 files a new series under one study and caller 2 names it
    under another: caller 2 fails on caller 1's rows, not committed yet. The commit of the
    rest (caller 1) then fails, so that series was never filed: caller 2 must not keep a
    permanent refusal (0xC003) for it. It is written again in a transaction of its own
    once the batch is settled, and files the series under its own study."""
    lost = OperationalError("COMMIT", {}, Exception("disk I/O error"))

    def upsert(n: int, series: int, study: str | None = None) -> Callable[[], Any]:
        ds = _dataset(n, series=series)
        if study is not None:
            ds.StudyInstanceUID = study
        attrs = InstanceAttributes.from_header(ds)
        return lambda: index.upsert_instance(attrs, object_key=f"k/{n}",
                                             in_transaction=_audited, **COMMON)

    commits: list[int] = []

    def second_fails(_conn: Any) -> None:  # caller 0's commit, then caller 1's alone
        commits.append(1)
        if len(commits) == 2:
            raise lost

    assert index.committer is not None
    index.committer.in_flight = 1
    hold = _Hold(index)
    event.listen(index.engine, "commit", second_fails)  # after the hold's: it waits first
    callers = _Callers()
    try:
        callers.start(0, upsert(0, series=0))
        assert hold.reached.wait(30)
        callers.start(1, upsert(1, series=9))  # first in the next batch: files the series
        assert wait_for(lambda: index.committer.waiting == 1, timeout=30)
        callers.start(2, upsert(2, series=9, study=f"{PREFIX}3.2"))  # another study
        assert wait_for(lambda: index.committer.waiting == 2, timeout=30)
        hold.released.set()
        callers.join()
    finally:
        hold.remove()
        event.remove(index.engine, "commit", second_fails)
    assert list(callers.errors) == [1] and isinstance(callers.errors[1], OutOfResources)
    assert len(commits) == 3  # caller 0's, caller 1's (failed), caller 2's
    assert callers.results == {0: None, 2: None}
    assert index.get_instance(f"{PREFIX}2.2") is not None
    with index.engine.connect() as conn:
        filed_under = conn.execute(
            select(Study.study_instance_uid).join(Series, Series.study_fk == Study.id)
            .where(Series.series_instance_uid == f"{PREFIX}1.9")).scalars().all()
    assert filed_under == [f"{PREFIX}3.2"]
    assert index.get_instance(f"{PREFIX}2.1") is None
    assert _rows(index, Instance) == 2 and _rows(index, AuditEvent) == 2


def test_a_failed_commit_fails_every_waiter_and_keeps_nothing(index: SqlIndex) -> None:
    lost = OperationalError("COMMIT", {}, Exception("disk I/O error"))

    def upsert(n: int) -> Callable[[], Any]:
        return lambda: index.upsert_instance(_attrs(n), object_key=f"k/{n}",
                                             in_transaction=_audited, **COMMON)

    # The held commit (caller 0's) fails; the batch behind it is then held the same way.
    assert index.committer is not None
    index.committer.in_flight = 1
    hold = _Hold(index)
    hold.fail = lost
    callers = _Callers()
    try:
        callers.start(0, upsert(0))
        assert hold.reached.wait(30)
        for n in range(1, 8):
            callers.start(n, upsert(n))
        assert wait_for(lambda: index.committer.waiting == 7, timeout=30)
        second = _Hold(index)
        second.fail = lost
        hold.released.set()
        assert second.reached.wait(30)
        assert callers.returned == [0]  # the first batch failed; the rest is not committed
        second.released.set()
        callers.join()
    finally:
        hold.remove()
        second.remove()
    assert set(callers.errors) == set(range(8))
    assert all(isinstance(e, OutOfResources) for e in callers.errors.values())
    assert not callers.results
    assert _rows(index, Instance) == 0 and _rows(index, AuditEvent) == 0


def test_success_is_answered_only_after_the_commit_that_holds_the_row(
    index: SqlIndex,
) -> None:
    """At the DIMSE level: the C-STORE handler's return value is the response pynetdicom
    sends; none returns while the commit holding its row is held, and each row is visible
    to another connection the moment its handler returns."""
    store = MemoryStore()
    seen: dict[int, bool] = {}

    def store_one(n: int) -> Callable[[], Any]:
        ds = copy.deepcopy(pydicom.dcmread(ct_small()))
        ds.SOPInstanceUID = f"{PREFIX}2.{n}"
        del ds.file_meta

        def call() -> int:
            status = _status(handle_store(_event(ds), store, index, Policy("MIMIC")))
            with index.engine.connect() as other:  # only committed rows are visible here
                seen[n] = other.execute(select(Instance.id).where(
                    Instance.sop_instance_uid == ds.SOPInstanceUID)).first() is not None
            return status

        return call

    # The series filed first: on PostgreSQL its first instance has a transaction of its
    # own, which waits for the put (``test_slow_puts_of_new_series_hold_no_batch_...``).
    assert store_one(99)() == 0x0000
    with _batched(index, store_one(0), {n: store_one(n) for n in range(1, 12)}) as callers:
        pass
    assert not callers.errors, callers.errors
    assert callers.results == {n: 0x0000 for n in range(12)}
    assert seen == {n: True for n in range(12)} | {99: True}
    assert len(store.objects) == 13


def test_every_waiter_gets_the_error_when_the_database_is_down() -> None:
    """Nothing answers on port 9: every concurrent C-STORE is refused 0xA700, nothing kept."""
    down = SqlIndex(create_index_engine("postgresql+psycopg://mimic@127.0.0.1:9/none"))
    store = MemoryStore()
    callers = _Callers()
    base = pydicom.dcmread(ct_small())
    del base.file_meta
    for n in range(8):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = f"{PREFIX}2.{n}"
        callers.start(n, lambda ds=ds: _status(handle_store(_event(ds), store, down,
                                                            Policy("MIMIC"))))
    callers.join()
    down.engine.dispose()
    assert callers.results == {n: 0xA700 for n in range(8)}
    assert not store.objects


def test_group_commit_off_gives_each_upsert_its_own_transaction(index: SqlIndex) -> None:
    alone = SqlIndex(index.engine, group_commit=False)
    assert alone.committer is None
    callers = _Callers()
    for n in range(8):
        callers.start(n, lambda n=n: alone.upsert_instance(_attrs(n), object_key=f"k/{n}",
                                                           in_transaction=_audited, **COMMON))
    callers.join()
    assert not callers.errors and callers.results == {n: None for n in range(8)}
    assert _rows(index, Instance) == 8 and _rows(index, AuditEvent) == 8


def test_a_lone_caller_is_committed_at_once(index: SqlIndex) -> None:
    """Nothing queued: the caller leads its own transaction of one (no waiting for company)."""
    assert index.committer is not None
    index.upsert_instance(_attrs(1), object_key="k", **COMMON)
    assert (index.committer.batches, index.committer.largest_batch) == (1, 1)


def test_batch_size_is_bounded(index: SqlIndex) -> None:
    small = SqlIndex(index.engine, max_batch=4)
    assert small.committer is not None

    def upsert(n: int) -> Callable[[], Any]:
        return lambda: small.upsert_instance(_attrs(n), object_key=f"k/{n}", **COMMON)

    with _batched(small, upsert(0), {n: upsert(n) for n in range(1, 11)}) as callers:
        pass
    assert not callers.errors
    assert small.committer.largest_batch == 4 and small.committer.batches == 4  # 1+4+4+2
    assert _rows(index, Instance) == 11


@pytest.mark.parametrize("in_flight", [1, 3])
def test_many_threads_many_batches_each_get_their_own_result(
    index: SqlIndex, in_flight: int
) -> None:
    """No hold: 12 threads of 15 upserts each (a third of them re-sends) into a few series,
    with one or several batches in flight; every caller gets its own replaced key."""
    assert index.committer is not None
    index.committer.in_flight = in_flight
    callers = _Callers()

    def sender(t: int) -> list[str | None]:
        got = []
        for i in range(15):
            n = t * 100 + i
            got.append(index.upsert_instance(_attrs(n, series=t % 3), object_key=f"a/{n}",
                                             in_transaction=_audited, **COMMON))
            if i % 3 == 0:
                got.append(index.upsert_instance(_attrs(n, series=t % 3), object_key=f"b/{n}",
                                                 in_transaction=_audited, **COMMON))
        return got

    for t in range(12):
        callers.start(t, lambda t=t: sender(t))
    callers.join()
    assert not callers.errors, callers.errors
    for t in range(12):
        expected: list[str | None] = []
        for i in range(15):
            expected.append(None)
            if i % 3 == 0:
                expected.append(f"a/{t * 100 + i}")
        assert callers.results[t] == expected
    assert _rows(index, Instance) == 180 and _rows(index, AuditEvent) == 240
    assert index.committer.instances >= 240  # retries of transient failures come again


def test_postgresql_stopped_under_a_held_batch_fails_every_waiter(tmp_path: Any) -> None:
    """A private cluster (never the shared one) is stopped while a batch's commit is held and
    others wait behind it: every caller gets OutOfResources (0xA700 at the DIMSE level), and
    once the database is back none of their rows is there."""
    from mimic_server.index import schema
    from tests import database

    cluster = database.PrivateCluster()
    cluster.start()
    try:
        with database.fresh_database(cluster.url) as url:
            engine = create_index_engine(url)
            schema.upgrade(engine)
            index = SqlIndex(engine, in_flight=1)
            assert index.committer is not None
            hold = _Hold(index)
            callers = _Callers()

            def upsert(n: int) -> Callable[[], Any]:
                return lambda: index.upsert_instance(_attrs(n), object_key=f"k/{n}",
                                                     in_transaction=_audited, **COMMON)

            try:
                callers.start(0, upsert(0))
                assert hold.reached.wait(30)
                for n in range(1, 6):
                    callers.start(n, upsert(n))
                assert wait_for(lambda: index.committer.waiting == 5, timeout=30)
                cluster.stop()
                hold.released.set()
                callers.join()
            finally:
                hold.remove()
            assert set(callers.errors) == set(range(6)), callers.results
            assert all(isinstance(e, OutOfResources) for e in callers.errors.values())
            engine.dispose()
            cluster.start()
            engine = create_index_engine(url)
            try:
                back = SqlIndex(engine)
                assert _rows(back, Instance) == 0 and _rows(back, AuditEvent) == 0
                back.upsert_instance(_attrs(9), object_key="k/9", **COMMON)  # and it works
                assert _rows(back, Instance) == 1
            finally:
                engine.dispose()
    finally:
        cluster.remove()


def _refused(conn: Connection) -> None:
    """A write the database refuses, not a transient one: the caller's upsert fails. It
    writes on the connection first, so it is never gathered into the instance's statement
    (PostgreSQL's ``_alone``): it fails inside a transaction."""
    conn.execute(text("SELECT 1"))
    raise OperationalError("INSERT", {}, Exception("disk I/O error"))


def test_a_committed_batch_keeps_its_connection_for_the_next(index: SqlIndex) -> None:
    """Batch after batch on one connection checked out once; ``close`` gives it back, and
    the batches after that check out and give back their own."""
    checkouts: list[Any] = []
    event.listen(index.engine.pool, "checkout", lambda dbapi, _rec, _proxy:
                 checkouts.append(dbapi))
    used: list[Any] = []

    def note(conn: Connection) -> None:
        used.append(conn.connection.dbapi_connection)

    for n in range(5):
        index.upsert_instance(_attrs(n), object_key=f"k/{n}", in_transaction=note, **COMMON)
    assert len(checkouts) == 1 and all(dbapi is used[0] for dbapi in used)
    assert index.engine.pool.checkedout() == 1  # the kept one
    index.close()
    assert index.engine.pool.checkedout() == 0
    index.upsert_instance(_attrs(5), object_key="k/5", **COMMON)
    assert index.engine.pool.checkedout() == 0 and len(checkouts) == 2
    assert _rows(index, Instance) == 6


def test_a_connection_goes_back_to_the_pool_keep_seconds_after_its_checkout(
    index: SqlIndex, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kept no longer than ``KEEP_SECONDS`` from its checkout, so that the pool's checkout
    (recycle age, invalidation) sees every connection at least that often."""
    from mimic_server.index import group_commit

    checkouts: list[Any] = []
    event.listen(index.engine.pool, "checkout", lambda dbapi, _rec, _proxy:
                 checkouts.append(dbapi))
    monkeypatch.setattr(group_commit, "KEEP_SECONDS", 0.0)
    for n in range(3):
        index.upsert_instance(_attrs(n), object_key=f"k/{n}", **COMMON)
        assert index.engine.pool.checkedout() == 0
    assert len(checkouts) == 3
    monkeypatch.setattr(group_commit, "KEEP_SECONDS", 60.0)
    for n in range(3, 6):
        index.upsert_instance(_attrs(n), object_key=f"k/{n}", **COMMON)
    assert len(checkouts) == 4 and index.engine.pool.checkedout() == 1


def test_a_batch_that_failed_does_not_keep_its_connection(index: SqlIndex) -> None:
    index.upsert_instance(_attrs(0), object_key="k/0", **COMMON)
    assert index.engine.pool.checkedout() == 1
    with pytest.raises(OutOfResources):
        index.upsert_instance(_attrs(1), object_key="k/1", in_transaction=_refused, **COMMON)
    assert index.engine.pool.checkedout() == 0  # closed after the rollback, not kept
    index.upsert_instance(_attrs(2), object_key="k/2", **COMMON)
    assert index.engine.pool.checkedout() == 1
    assert _rows(index, Instance) == 2 and index.get_instance(f"{PREFIX}2.1") is None


def test_a_connection_kept_past_the_idle_limit_is_pinged_before_it_is_used(
    postgres_server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """The kept connection's backend ends while it sits unused past ``IDLE_PING_SECONDS``:
    it goes back to the pool as idle since its last commit, so the pool pings it, finds it
    lost and hands out a fresh one. The next C-STORE's transaction runs once, on that one
    (no 'connection lost' rerun), as with a connection that sat in the pool."""
    from mimic_server.index import engine as engine_module
    from mimic_server.index import schema
    from tests import database
    from tests.unit.test_stale_connections import _terminate

    monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 0.2)
    with database.fresh_database(postgres_server) as url:
        engine = create_index_engine(url)
        schema.upgrade(engine)
        index = SqlIndex(engine)
        try:
            index.upsert_instance(_attrs(0), object_key="k/0", **COMMON)
            assert index.committer is not None and len(index.committer._kept) == 1
            kept = index.committer._kept[0][0].connection.dbapi_connection
            assert kept is not None
            time.sleep(0.3)
            assert _terminate(postgres_server, url, kept.info.backend_pid) == 1
            with caplog.at_level(logging.WARNING, logger="mimic_server.index"):
                index.upsert_instance(_attrs(1), object_key="k/1", **COMMON)
            assert not [r for r in caplog.records if "connection lost" in r.getMessage()]
            assert _rows(index, Instance) == 2
        finally:
            index.close()
            engine.dispose()


def test_a_lost_connection_sends_every_kept_one_back_before_the_rerun(
    postgres_server: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """Three batches in flight at once leave three kept connections; all backends end (a
    server restart). The next batch meets a lost connection, and its one rerun must run on
    a fresh connection from the pool, not on another kept one lost the same way."""
    from mimic_server.index import schema
    from mimic_server.index.group_commit import GroupCommitter
    from tests import database
    from tests.unit.test_stale_connections import _terminate

    with database.fresh_database(postgres_server) as url:
        engine = create_index_engine(url)
        schema.upgrade(engine)
        committer = GroupCommitter(engine, in_flight=8)
        together = threading.Barrier(3, timeout=30)

        def held(conn: Connection) -> int:
            together.wait()  # three transactions open side by side, on three connections
            return int(conn.execute(text("SELECT 1")).scalar_one())

        try:
            callers = _Callers()
            for n in range(3):
                callers.start(n, lambda: committer.run(held))
            callers.join()
            assert not callers.errors and len(committer._kept) == 3
            assert _terminate(postgres_server, url) == 3
            with caplog.at_level(logging.WARNING, logger="mimic_server.index"):
                answer = committer.run(lambda conn: int(conn.execute(text("SELECT 2"))
                                                        .scalar_one()))
            assert answer == 2
            assert len([r for r in caplog.records if "runs again" in r.getMessage()]) == 1
            assert len(committer._kept) == 1  # the fresh one
        finally:
            committer.close()
            engine.dispose()


def test_a_socket_found_gone_before_libpq_knows_is_a_lost_connection(
    postgres_server: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """psycopg can find a lost connection's socket gone before libpq marks the connection
    broken ("connection socket closed", no SQLSTATE): SQLAlchemy's dialect alone would not
    call that a disconnect, so the batch failed instead of running again (seen in CI, after
    ``pg_terminate_backend``). The engine counts it as lost: the pool is invalidated and the
    batch runs once more, on a fresh connection. An error the server sent (a statement
    timeout), or one psycopg raises for a statement on a sound connection (too many
    parameters, no SQLSTATE either), is not a lost connection: it fails the batch, nothing
    runs again."""
    import psycopg

    from mimic_server.index import schema
    from mimic_server.index.group_commit import GroupCommitter
    from tests import database

    with database.fresh_database(postgres_server) as url:
        engine = create_index_engine(url)
        schema.upgrade(engine)
        committer = GroupCommitter(engine)
        raised: list[Any] = []

        @event.listens_for(engine, "before_cursor_execute")
        def socket_gone_once(conn: Connection, *_: Any) -> None:
            if not raised:
                raised.append(conn.connection.dbapi_connection)
                raise psycopg.OperationalError("connection socket closed")

        def timed_out(conn: Connection) -> None:
            conn.execute(text("SET LOCAL statement_timeout = 1"))
            conn.execute(text("SELECT pg_sleep(1)"))

        def too_many_parameters(conn: Connection) -> None:  # psycopg refuses it, no SQLSTATE
            query = text("SELECT 1 WHERE 1 IN :values").bindparams(
                bindparam("values", expanding=True))
            conn.execute(query, {"values": list(range(70_000))})

        try:
            with caplog.at_level(logging.WARNING, logger="mimic_server.index"):
                answer = committer.run(lambda conn: int(conn.execute(text("SELECT 2"))
                                                        .scalar_one()))
            assert answer == 2
            assert len(raised) == 1 and raised[0].closed  # thrown away, not pooled again
            assert len([r for r in caplog.records if "runs again" in r.getMessage()]) == 1
            caplog.clear()
            with (caplog.at_level(logging.WARNING, logger="mimic_server.index"),
                  pytest.raises(OperationalError) as refused):
                committer.run(timed_out)
            assert refused.value.orig.sqlstate == "57014"
            assert not refused.value.connection_invalidated
            with (caplog.at_level(logging.WARNING, logger="mimic_server.index"),
                  pytest.raises(OperationalError) as refused):
                committer.run(too_many_parameters)
            assert refused.value.orig.sqlstate is None
            assert not refused.value.connection_invalidated
            assert not [r for r in caplog.records if "runs again" in r.getMessage()]
        finally:
            committer.close()
            engine.dispose()


def test_a_statement_cancelled_at_the_deadline_fails_the_whole_batch(index: SqlIndex) -> None:
    """A statement PostgreSQL cancelled at the server's lock timeout (a locked table) is the
    transaction's failure, every waiter's at once (0xA700), none written: the batch's others
    would each wait as long again, one after another, if it were taken for the one waiter's.
    """
    def locked(conn: Connection) -> None:
        raise OperationalError("INSERT INTO instances ...", {}, psycopg.errors.LockNotAvailable(
            "canceling statement due to lock timeout"))

    def upsert(n: int) -> Callable[[], Any]:
        return lambda: index.upsert_instance(
            _attrs(n), object_key=f"k/{n}", in_transaction=locked if n == 2 else _audited,
            **COMMON)

    with _batched(index, upsert(0), {n: upsert(n) for n in range(1, 6)}) as callers:
        pass
    assert set(callers.errors) == {1, 2, 3, 4, 5}
    assert all(isinstance(e, OutOfResources) for e in callers.errors.values())
    assert _rows(index, Instance) == 1  # caller 0's, in the batch before


def test_a_caller_queued_past_the_deadline_is_refused_and_writes_nothing(
    index: SqlIndex, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind a batch that does not end (a table locked, a writer of another process), a
    caller still queued gives up after ``QUEUE_SECONDS`` with 0xA700 "index unavailable",
    instead of waiting as long as the batch, its thread held."""
    assert index.committer is not None
    index.committer.in_flight = 1  # the held batch is the only one
    monkeypatch.setattr(group_commit, "QUEUE_SECONDS", 0.2, raising=False)
    hold = _Hold(index)
    callers = _Callers()
    try:
        callers.start(0, lambda: index.upsert_instance(_attrs(0), object_key="k/0", **COMMON))
        assert hold.reached.wait(30)
        callers.start(1, lambda: index.upsert_instance(_attrs(1), object_key="k/1", **COMMON))
        callers.threads[1].join(30)
        assert not callers.threads[1].is_alive()
        assert callers.returned == [1]  # while caller 0's commit is still held
        assert isinstance(callers.errors[1], OutOfResources)
        assert str(callers.errors[1]) == "index unavailable"
        assert index.committer.waiting == 0
        hold.released.set()
        callers.join()
    finally:
        hold.remove()
    assert callers.results == {0: None}, callers.errors
    assert index.get_instance(f"{PREFIX}2.1") is None and _rows(index, Instance) == 1


def test_slow_puts_of_new_series_hold_no_batch_of_the_others(
    postgresql_index: SqlIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the first instance of a new series waits for its object's put inside
    its transaction (``before_new_rows``, ``archive.ingest.keep``). In a shared batch, as many
    slow puts as batches may be in flight (8) held every batch, and a C-STORE of a series
    already filed waited out ``QUEUE_SECONDS`` and was refused 0xA700. Each such caller now
    has a transaction of its own: the other C-STORE commits while the puts still run."""
    index = postgresql_index  # PostgreSQL only: the put overlaps the index transaction there
    monkeypatch.setattr(group_commit, "QUEUE_SECONDS", 5.0)  # the refusal, sooner
    assert index.committer is not None
    slots = index.committer.in_flight
    index.upsert_instance(_attrs(0, series=100), object_key="k/0",
                          in_transaction=_audited, **COMMON)  # a series already filed
    put_done = threading.Event()
    waiting: list[int] = []

    def slow_put(n: int) -> Callable[[], None]:
        def before_new_rows() -> None:
            waiting.append(n)
            assert put_done.wait(60)
        return before_new_rows

    callers = _Callers()
    try:
        for n in range(1, slots + 1):
            callers.start(n, lambda n=n: index.upsert_instance(
                _attrs(n, series=n), object_key=f"k/{n}", in_transaction=_audited,
                before_new_rows=slow_put(n), **COMMON))
        assert wait_for(lambda: len(waiting) == slots, timeout=30)
        other = slots + 1
        callers.start(other, lambda: index.upsert_instance(
            _attrs(other, series=100), object_key=f"k/{other}", in_transaction=_audited,
            **COMMON))
        assert wait_for(lambda: other in callers.returned, timeout=30)
        assert other not in callers.errors, callers.errors.get(other)
        assert index.get_instance(f"{PREFIX}2.{other}") is not None
        assert sorted(callers.returned) == [other]  # the puts still run
    finally:
        put_done.set()
        callers.join()
    assert not callers.errors
    assert _rows(index, Instance) == slots + 2 and _rows(index, AuditEvent) == slots + 2
