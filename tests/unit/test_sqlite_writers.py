"""Writers of one SQLite index in several processes (``mimic serve``'s workers) queue on the
``flock`` beside the database (``index/engine.py``): none is lost, none sees ``database is
locked``, readers never wait for the lock, and a writer that dies frees it."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import OperationalError

from mimic_server.errors import OutOfResources
from mimic_server.index import engine as index_engine
from mimic_server.index import repository, schema
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.engine import (
    WRITE,
    WriterLockedConnection,
    create_index_engine,
    writer_lock_path,
)
from mimic_server.index.models import Instance
from mimic_server.index.repository import SqlIndex
from tests.data import ct_small
from tests.support import wait_for

PREFIX = "1.2.826.0.1.3680043.8.498.78."
COMMON = {"transfer_syntax_uid": "1.2.840.10008.1.2.1", "sha256": "0" * 64, "size": 1,
          "received_from": "t"}
ROOT = Path(__file__).resolve().parents[2]


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _attrs(n: int, series: int) -> InstanceAttributes:
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    ds.SeriesInstanceUID = f"{PREFIX}1.{series}"
    ds.SOPInstanceUID = f"{PREFIX}2.{n}"
    return InstanceAttributes.from_header(ds)


def _count(url: str) -> int:
    engine = create_index_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Instance)).scalar_one())
    finally:
        engine.dispose()


def _writer_process(url: str, first: int, threads: int, per_thread: int,
                    errors: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """One 'worker process': several threads upserting through one group-committed index."""
    engine = create_index_engine(url)
    index = SqlIndex(engine)
    work = [[_attrs(first + t * per_thread + i, series=(t + i) % 4) for i in range(per_thread)]
            for t in range(threads)]

    def run(items: list[InstanceAttributes]) -> None:
        for attrs in items:
            try:
                index.upsert_instance(attrs, object_key=attrs.sop_instance_uid, **COMMON)
            except Exception as exc:  # reported to the test, with its cause
                errors.put(f"{exc!r} caused by {exc.__cause__!r}")

    pool = [threading.Thread(target=run, args=(items,)) for items in work]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    engine.dispose()


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    url = _url(tmp_path / "index.sqlite3")
    engine = create_index_engine(url)
    schema.upgrade(engine)
    engine.dispose()
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_writer_process, args=(url, p * 1000, 3, 40, errors))
             for p in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert reported == []  # no "database is locked", no lost insert
    assert _count(url) == 2 * 3 * 40
    assert Path(writer_lock_path(url) or "").exists()


def test_a_writer_waits_for_the_lock_and_readers_do_not(tmp_path: Path) -> None:
    url = _url(tmp_path / "index.sqlite3")
    engine = create_index_engine(url)
    schema.upgrade(engine)
    index = SqlIndex(engine)
    lock_path = writer_lock_path(url)
    assert lock_path is not None
    held = os.open(lock_path, os.O_RDWR | os.O_CREAT)  # another process's writer, in effect
    fcntl.flock(held, fcntl.LOCK_EX)
    done = threading.Event()

    def write() -> None:
        index.upsert_instance(_attrs(1, 0), object_key="k1", **COMMON)
        done.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        assert not done.wait(0.5)  # queued behind the lock, not written
        with engine.connect() as conn:  # a reader is not held up
            assert conn.execute(select(func.count()).select_from(Instance)).scalar_one() == 0
    finally:
        fcntl.flock(held, fcntl.LOCK_UN)
        os.close(held)
    writer.join(30)
    assert done.is_set()
    assert index.get_instance(f"{PREFIX}2.1") is not None
    engine.dispose()


def test_the_lock_is_given_back_after_commit_and_after_rollback(tmp_path: Path) -> None:
    url = _url(tmp_path / "index.sqlite3")
    engine = create_index_engine(url)
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, WriterLockedConnection) and raw._locked
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    assert not raw._locked
    with pytest.raises(ZeroDivisionError), engine.connect().execution_options(**WRITE) as conn, \
            conn.begin():
        conn.execute(text("INSERT INTO t VALUES (1)"))
        assert conn.connection.dbapi_connection._locked  # type: ignore[union-attr]
        raise ZeroDivisionError
    with engine.connect() as conn, conn.begin():  # a read transaction takes no lock
        assert not conn.connection.dbapi_connection._locked  # type: ignore[union-attr]
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
    lock_path = writer_lock_path(url)
    assert lock_path is not None
    probe = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: nobody holds it
    finally:
        os.close(probe)
    engine.dispose()


def test_a_begin_that_finds_the_database_busy_raises_sqlalchemys_error_and_unlocks(
        tmp_path: Path) -> None:
    """A database busy beyond the writers' lock (another program's writer) is SQLAlchemy's
    ``OperationalError`` at BEGIN IMMEDIATE, which the retries look for, and the writers'
    lock is given back."""
    path = tmp_path / "index.sqlite3"
    engine = create_index_engine(_url(path))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    outsider = sqlite3.connect(path, isolation_level=None)  # not through the writers' lock
    outsider.execute("BEGIN IMMEDIATE")
    try:
        conn = engine.connect().execution_options(**WRITE)
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, WriterLockedConnection)
        raw.execute("PRAGMA busy_timeout=50")
        with pytest.raises(OperationalError, match="database is locked"):
            conn.begin()
        assert not raw._locked
        conn.close()
    finally:
        outsider.rollback()
        outsider.close()
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        conn.execute(text("INSERT INTO t VALUES (1)"))  # the connection and the lock work
    engine.dispose()


_HOLDER = """
import sys, time
from sqlalchemy import text
from mimic_server.index.engine import WRITE, create_index_engine
engine = create_index_engine(sys.argv[1])
conn = engine.connect().execution_options(**WRITE)
conn.begin()
conn.execute(text("INSERT INTO t VALUES (1)"))
print("holding", flush=True)
time.sleep(600)
"""


def test_a_writer_that_dies_holding_the_lock_frees_it(tmp_path: Path) -> None:
    url = _url(tmp_path / "index.sqlite3")
    engine = create_index_engine(url)
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, url], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        lock_path = writer_lock_path(url)
        assert lock_path is not None
        probe = os.open(lock_path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        with engine.connect().execution_options(**WRITE) as conn, conn.begin():
            conn.execute(text("INSERT INTO t VALUES (2)"))
        with engine.connect() as conn:  # the dead writer's row was never committed
            assert conn.execute(text("SELECT x FROM t")).scalars().all() == [2]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)
        engine.dispose()


def test_only_a_database_file_gets_a_lock_file_beside_it() -> None:
    assert writer_lock_path("sqlite://") is None
    assert writer_lock_path("sqlite:///:memory:") is None
    assert writer_lock_path("sqlite:///file:index?mode=memory&uri=true") is None
    assert writer_lock_path("sqlite:////data/index.sqlite3") == "/data/index.sqlite3-writer.lock"


def test_callers_that_queue_while_the_leader_waits_for_the_lock_share_its_commit(
    tmp_path: Path,
) -> None:
    """The leader takes its batch only once it holds the write lock: whoever queued while
    another process was committing rides in the same transaction (one commit, not six)."""
    url = _url(tmp_path / "index.sqlite3")
    engine = create_index_engine(url)
    schema.upgrade(engine)
    index = SqlIndex(engine)
    assert index.committer is not None
    lock_path = writer_lock_path(url)
    assert lock_path is not None
    held = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    results: dict[int, object] = {}

    def write(n: int) -> None:
        results[n] = index.upsert_instance(_attrs(n, 0), object_key=f"k{n}", **COMMON)

    threads = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(6)]
    try:
        threads[0].start()
        assert wait_for(lambda: index.committer.waiting == 1, timeout=30)
        for t in threads[1:]:
            t.start()
        assert wait_for(lambda: index.committer.waiting == 6, timeout=30)
        assert results == {}  # nothing committed, nobody answered
    finally:
        fcntl.flock(held, fcntl.LOCK_UN)
        os.close(held)
    for t in threads:
        t.join(30)
    assert results == {n: None for n in range(6)}
    assert (index.committer.batches, index.committer.largest_batch) == (1, 6)
    assert _count(url) == 6
    engine.dispose()


def test_writers_behind_an_outside_write_lock_are_refused_within_one_busy_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another program holds SQLite's write lock (an operator's ``sqlite3`` shell): a writer
    of one worker process waits its busy timeout and is refused (0xA700), not tried again; a
    writer of another worker, which waited on the writers' flock meanwhile, waits only what
    is left of its own busy timeout. Before, each waited a full busy timeout after the
    other's, four times over (retries): minutes, past a sender's DIMSE timeout."""
    monkeypatch.setattr(index_engine, "BUSY_TIMEOUT_MS", 1000)
    monkeypatch.setattr(repository, "_RETRY_WITHIN", 0.5, raising=False)
    retries: list[float] = []
    monkeypatch.setattr(repository, "time", SimpleNamespace(
        monotonic=time.monotonic, sleep=retries.append))
    url = _url(tmp_path / "index.sqlite3")
    setup = create_index_engine(url)
    schema.upgrade(setup)
    setup.dispose()
    workers = [SqlIndex(create_index_engine(url)) for _ in range(2)]  # as two processes'
    busy: dict[int, list[int]] = {}  # each worker's busy timeout at its BEGIN IMMEDIATE
    began = threading.Event()
    for n, worker in enumerate(workers):
        def seen(_conn: Any, cursor: Any, statement: str, *_args: Any, n: int = n) -> None:
            if statement == "BEGIN IMMEDIATE":
                ms = cursor.connection.execute("PRAGMA busy_timeout").fetchone()[0]
                busy.setdefault(n, []).append(ms)
                began.set()
        event.listen(worker.engine, "before_cursor_execute", seen)
    outsider = sqlite3.connect(tmp_path / "index.sqlite3", isolation_level=None)
    outsider.execute("BEGIN IMMEDIATE")
    errors: dict[int, BaseException] = {}

    def upsert(n: int) -> None:
        try:
            workers[n].upsert_instance(_attrs(n, series=0), object_key=f"k/{n}", **COMMON)
        except BaseException as exc:  # handed to the test
            errors[n] = exc

    try:
        threads = [threading.Thread(target=upsert, args=(0,), daemon=True)]
        threads[0].start()
        assert began.wait(30)  # worker 0 holds the writers' flock, in SQLite's busy wait
        threads.append(threading.Thread(target=upsert, args=(1,), daemon=True))
        threads[1].start()
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive()
    finally:
        outsider.rollback()
        outsider.close()
    assert set(errors) == {0, 1}
    assert all(isinstance(e, OutOfResources) for e in errors.values())
    assert retries == []  # a busy wait that ran out is not waited out again
    assert busy[0] == [1000]
    assert all(ms < 1000 for ms in busy.get(1, []))  # what the flock's wait left, if anything
    assert _count(url) == 0
    for worker in workers:
        worker.close()
        worker.engine.dispose()
