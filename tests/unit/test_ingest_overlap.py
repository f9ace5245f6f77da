"""The put that overlaps the index transaction (PostgreSQL): the row still commits only after
the object is durable, a failed put leaves no row, a failed index leaves no object. The same
order holds where the row is one statement sent after the put (a series already known)."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterable
from typing import Any

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from mimic_server.archive.ingest import ReceivedObject, keep
from mimic_server.codec.file_meta import encode_file_meta
from mimic_server.errors import DicomStatusError, OutOfResources
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.repository import SqlIndex
from mimic_server.storage.memory import MemoryStore
from tests.data import ct_small

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _received(sop_instance_uid: str | None = None) -> tuple[ReceivedObject, InstanceAttributes]:
    ds = pydicom.dcmread(ct_small())
    if sop_instance_uid is not None:
        ds.SOPInstanceUID = sop_instance_uid
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    meta = encode_file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), EXPLICIT_LE, "T")
    received = ReceivedObject.of(meta, memoryview(out.getvalue()), EXPLICIT_LE)
    return received, InstanceAttributes.from_header(received.header)


class GatedStore(MemoryStore):
    """A store whose put waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def put(self, key: str, chunks: Iterable[bytes | memoryview], sha256: str | None) -> int:
        self.entered.set()
        assert self.gate.wait(30)
        return super().put(key, chunks, sha256)


class Recorder:
    """Stands in for a prepared audit record: notes what the store held when it was written."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.objects_when_written: list[int] = []
        self.committed_calls = 0

    def write_in(self, conn: Any) -> None:
        self.objects_when_written.append(len(self.store.objects))

    def committed(self) -> None:
        self.committed_calls += 1


def test_postgresql_overlaps_a_new_series_and_sqlite_never(index: SqlIndex) -> None:
    """PostgreSQL's first instance of a series has look-ups and inserts to overlap; once its
    series is known an instance is one statement, sent after the put: nothing to overlap."""
    received, attrs = _received()
    assert index.overlaps_put(attrs) == (index.engine.dialect.name == "postgresql")
    keep(MemoryStore(), index, received, attrs, "t")
    assert index.overlaps_put(attrs) is False


def test_a_small_pool_puts_the_object_before_the_transaction(postgres_server: str) -> None:
    """A transaction that waits for its object's put holds a connection through it: with
    a small pool's few (``MIMIC_DATABASE_POOL_SIZE`` budgeted under a small server's limit),
    the put comes first, and the row is still kept."""
    from mimic_server.index import schema
    from mimic_server.index.engine import create_index_engine
    from tests import database

    with database.fresh_database(postgres_server) as url:
        for pool, overlaps in ((3, False), (15, False), (16, True), (32, True)):
            engine = create_index_engine(url, pool_size=pool)
            schema.upgrade(engine)
            index = SqlIndex(engine, pool_size=pool)
            try:
                received, attrs = _received(f"1.2.826.0.1.3680043.8.498.321.{pool}")
                assert index.overlaps_put(attrs) is overlaps, pool
                store = MemoryStore()
                keep(store, index, received, attrs, "t")
                assert len(store.objects) == 1
                assert index.get_instance(attrs.sop_instance_uid) is not None
            finally:
                index.close()
                engine.dispose()


@pytest.mark.parametrize("series", ["new", "known"])
def test_the_row_commits_only_after_the_put(index: SqlIndex, series: str) -> None:
    if series == "known":
        keep(MemoryStore(), index, *_received("1.2.826.0.1.3680043.8.498.99.1"), "t")
    received, attrs = _received()
    store = GatedStore()
    record = Recorder(store)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            keep(store, index, received, attrs, "t", record)  # type: ignore[arg-type]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert store.entered.wait(30)
    thread.join(0.3)  # room for the transaction to run ahead if it would
    before = 1 if series == "known" else 0
    assert thread.is_alive() and index.count_instances() == before
    store.gate.set()
    thread.join(30)
    assert not errors
    assert index.count_instances() == before + 1 and len(store.objects) == 1
    # The audit row is written in the transaction once the object is in the store.
    assert record.objects_when_written == [1] and record.committed_calls == 1


def test_a_failed_put_leaves_no_row(index: SqlIndex) -> None:
    received, attrs = _received()
    store = MemoryStore()
    store.fail = True
    with pytest.raises(OutOfResources):
        keep(store, index, received, attrs, "t")
    assert index.count_instances() == 0 and not store.objects


class _Refused(Exception):
    pass


class _RefusingRecord:
    """An audit record whose write the index transaction fails on."""

    def write_in(self, conn: Any) -> None:
        raise _Refused

    def committed(self) -> None:  # pragma: no cover - never committed
        raise AssertionError


def test_a_failed_index_leaves_no_object(index: SqlIndex) -> None:
    received, attrs = _received()
    store = GatedStore()
    store.gate.set()
    with pytest.raises(_Refused):
        keep(store, index, received, attrs, "t", _RefusingRecord())  # type: ignore[arg-type]
    assert index.count_instances() == 0 and not store.objects


class _Held(bytearray):
    """A data set's buffer that the test watches (through a weak reference) being freed."""


@pytest.mark.parametrize("group_commit", [True, False], ids=["group-commit", "alone"])
@pytest.mark.parametrize("failing", ["put", "index", "both"])
def test_a_failed_keep_leaves_nothing_for_the_garbage_collector(
    index: SqlIndex, failing: str, group_commit: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The received object of a failed store is freed as soon as its caller lets go of it,
    not when the garbage collector finds a cycle through the failure's traceback (a future
    or a group-commit waiter holding the failure whose frames hold them and the object)."""
    if not group_commit:
        index = SqlIndex(index.engine, group_commit=False)
    plain, attrs = _received()
    held = _Held(plain.dataset)
    received = ReceivedObject.of(plain.file_meta, memoryview(held), EXPLICIT_LE)
    freed = weakref.ref(held)
    del held, plain
    store = MemoryStore()
    store.fail = failing in ("put", "both")
    record = _RefusingRecord() if failing == "index" else None
    if failing == "both":  # the index fails before it waits for the put (PostgreSQL)

        def conflict(*args: Any) -> None:
            raise DicomStatusError("a hierarchy conflict")

        monkeypatch.setattr(index, "_upsert", conflict)
    gc.disable()
    try:
        try:
            keep(store, index, received, attrs, "t", record)  # type: ignore[arg-type]
        except (DicomStatusError, _Refused):
            pass
        else:  # pragma: no cover - the test's own failure
            raise AssertionError("kept")
        del received
        assert freed() is None
    finally:
        gc.enable()
    assert index.count_instances() == 0 and not store.objects
