"""A C-GET / C-MOVE reads the next object while the one before it is sent: from a thread of
its own, one object ahead, only objects held whole, in the match list's order, with the
read's outcome (an object, a failed sub-operation, an error) as reading it in turn gives;
and nothing is left running when the retrieve ends early."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from mimic_server.dimse import retrieve
from mimic_server.dimse.raw_send import StoredDataset
from mimic_server.dimse.retrieve import datasets
from mimic_server.query.finder import InstanceRef
from mimic_server.storage.memory import MemoryStore
from tests.data import ct_small

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _archive(count: int) -> tuple[MemoryStore, list[InstanceRef]]:
    data = ct_small().read_bytes()
    store = MemoryStore()
    refs = []
    for i in range(count):
        store.objects[f"k{i}"] = data
        refs.append(InstanceRef(CT_IMAGE, f"1.2.3.{i}", ExplicitVRLittleEndian, f"k{i}",
                                hashlib.sha256(data).hexdigest(), "1.2.3", "P1", "DOE^J",
                                len(data)))
    return store, refs


@pytest.fixture
def begun() -> dict[str, threading.Event]:
    """Set when the read of the object of that SOP Instance UID begins."""
    return {}


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch,
          begun: dict[str, threading.Event]) -> list[tuple[str, str]]:
    """(SOP Instance UID, thread name) of each read, in the order they began."""
    seen: list[tuple[str, str]] = []
    read = retrieve.read_verified

    def noted(store: Any, ref: InstanceRef, current: Any = None) -> Any:
        seen.append((ref.sop_instance_uid, threading.current_thread().name))
        begun.setdefault(ref.sop_instance_uid, threading.Event()).set()
        return read(store, ref, current)

    monkeypatch.setattr(retrieve, "read_verified", noted)
    monkeypatch.setattr(retrieve, "READ_AHEAD_FROM", 1)  # a CT slice counts as large here
    return seen


def test_each_next_object_is_read_in_a_thread_of_its_own_while_one_is_sent(
    reads: list[tuple[str, str]], begun: dict[str, threading.Event],
) -> None:
    store, refs = _archive(4)
    sent = []
    for dataset in datasets(store, refs):
        assert isinstance(dataset, StoredDataset)
        sent.append(dataset._mimic_ref.sop_instance_uid)
        if len(sent) < len(refs):  # while this one is sent, the next one is read
            following = refs[len(sent)].sop_instance_uid
            assert begun.setdefault(following, threading.Event()).wait(10), following
    assert sent == [r.sop_instance_uid for r in refs]
    assert [uid for uid, _ in reads] == [r.sop_instance_uid for r in refs]
    assert reads[0][1] == threading.current_thread().name
    assert all(name.startswith("mimic-read-ahead") for _, name in reads[1:])
    assert _wait_for_no_read_ahead()


def test_small_objects_and_unknown_sizes_are_read_in_turn(
    reads: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retrieve, "READ_AHEAD_FROM", 1 << 30)
    store, refs = _archive(3)
    assert len(list(datasets(store, refs))) == 3
    assert {name for _, name in reads} == {threading.current_thread().name}


def test_a_missing_object_read_ahead_is_a_failed_sub_operation_in_its_place(
    reads: list[tuple[str, str]],
) -> None:
    store, refs = _archive(3)
    del store.objects["k1"]
    got = list(datasets(store, refs))
    assert [type(d) is StoredDataset for d in got] == [True, False, True]
    assert got[1].SOPInstanceUID == refs[1].sop_instance_uid  # pynetdicom counts it failed


def test_an_error_of_a_read_ahead_comes_out_where_the_object_would(
    monkeypatch: pytest.MonkeyPatch, reads: list[tuple[str, str]],
) -> None:
    store, refs = _archive(3)
    read = retrieve.read_verified

    def failing(store: Any, ref: InstanceRef, current: Any = None) -> Any:
        if ref is refs[1]:
            raise RuntimeError("the store failed")
        return read(store, ref, current)

    monkeypatch.setattr(retrieve, "read_verified", failing)
    objects = datasets(store, refs)
    assert next(objects)._mimic_ref is refs[0]
    with pytest.raises(RuntimeError, match="the store failed"):
        next(objects)
    assert _wait_for_no_read_ahead()


def test_a_retrieve_ended_early_leaves_nothing_running(reads: list[tuple[str, str]]) -> None:
    store, refs = _archive(5)
    objects = datasets(store, refs)
    next(objects)
    next(objects)
    objects.close()  # a C-CANCEL, or the association gone
    assert _wait_for_no_read_ahead()
    assert len(reads) <= 3  # at most the one read ahead of the last sent


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mimic-read-ahead")]


def _wait_for_no_read_ahead() -> bool:
    for thread in _read_ahead_threads():
        thread.join(10)
    return not _read_ahead_threads()
