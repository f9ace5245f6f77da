"""archive/read.py: small objects read whole, large ones hashed by a pass and streamed."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import BinaryIO

import pytest

from mimic_server.archive import read
from mimic_server.archive.read import open_verified
from mimic_server.query.finder import InstanceRef
from mimic_server.storage.memory import MemoryStore

GROUP_LENGTH = 50


def _part10(size: int) -> bytes:
    """Bytes shaped like our Part 10 files: preamble, DICM, group length, then filler."""
    head = b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00"
    head += GROUP_LENGTH.to_bytes(4, "little") + b"\x01" * GROUP_LENGTH
    return head + bytes(range(256)) * ((size - len(head)) // 256 + 1)


class CountingStore(MemoryStore):
    """A memory store that remembers its open handles and which are closed."""

    def __init__(self) -> None:
        super().__init__()
        self.handles: list[io.BytesIO] = []

    def open(self, key: str) -> BinaryIO:
        handle = io.BytesIO(self.objects[key])
        self.handles.append(handle)
        return handle

    def open_handles(self) -> int:
        return sum(not h.closed for h in self.handles)


def _stored(store: MemoryStore, data: bytes, sha256: str | None = None) -> InstanceRef:
    store.objects["k"] = data
    return InstanceRef("1.2", "1.2.3", "1.2.840.10008.1.2.1", "k",
                       sha256 or hashlib.sha256(data).hexdigest())


def test_small_object_is_read_whole() -> None:
    store = CountingStore()
    data = _part10(4096)
    stored = open_verified(store, _stored(store, data))

    assert stored is not None and not stored.streamed
    assert stored.size == len(data)
    assert stored.dataset_offset == 144 + GROUP_LENGTH
    assert stored.read() == data
    assert b"".join(stored.chunks(stored.dataset_offset)) == data[144 + GROUP_LENGTH:]
    assert store.open_handles() == 0


def test_large_object_is_streamed_in_pieces_and_closed() -> None:
    store = CountingStore()
    data = _part10(100_000)
    stored = open_verified(store, _stored(store, data), stream_above=10_000)

    assert stored is not None and stored.streamed
    assert stored.size == len(data)
    assert stored.dataset_offset == 144 + GROUP_LENGTH
    assert store.open_handles() == 0  # the hash pass closed its handle
    pieces = list(stored.chunks(stored.dataset_offset, size=4096))
    assert b"".join(pieces) == data[stored.dataset_offset:]
    assert all(len(p) == 4096 for p in pieces[:-1]) and 0 < len(pieces[-1]) <= 4096
    assert store.open_handles() == 0
    assert stored.read() == data  # whole, on purpose (a conversion)


def test_an_abandoned_stream_closes_its_handle() -> None:
    store = CountingStore()
    data = _part10(100_000)
    stored = open_verified(store, _stored(store, data), stream_above=10_000)
    assert stored is not None
    pieces = stored.chunks(0, size=1000)
    assert bytes(next(pieces)) == data[:1000]
    assert store.open_handles() == 1
    pieces.close()  # what the sender does when its association ends midway
    assert store.open_handles() == 0


@pytest.mark.parametrize("size", [4096, 100_000], ids=["small", "large"])
def test_bytes_that_no_longer_match_their_hash_are_refused(
    size: int, caplog: pytest.LogCaptureFixture
) -> None:
    store = CountingStore()
    data = _part10(size)
    ref = _stored(store, data, hashlib.sha256(data + b"x").hexdigest())
    with caplog.at_level(logging.ERROR, logger=read.__name__):
        assert open_verified(store, ref, stream_above=10_000) is None
    assert "fails its SHA-256 check" in caplog.text
    assert "1.2.3" not in caplog.text  # no UIDs in the log
    assert store.open_handles() == 0


def test_missing_or_unreadable_object_is_none(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    ref = InstanceRef("1.2", "1.2.3", "1.2.840.10008.1.2.1", "absent", "0" * 64)
    with caplog.at_level(logging.ERROR, logger=read.__name__):
        assert open_verified(store, ref) is None
    assert "stored object unreadable" in caplog.text


class GrowingFileStore(MemoryStore):
    """Real files (the handle has a ``fileno``); ``grow`` appends to one after it is opened,
    as no stored object ever does: the read takes the file as it is when read."""

    def __init__(self, root: Path, grow: bytes = b"") -> None:
        super().__init__()
        self.root, self.grow = root, grow

    def open(self, key: str) -> BinaryIO:
        handle = open(self.root / key, "rb")  # noqa: SIM115
        if self.grow:
            with open(self.root / key, "ab") as fh:
                fh.write(self.grow)
        return handle


@pytest.mark.parametrize("size", [3000, 4095, 4096, 4097, 9000])
def test_files_of_every_size_around_the_streaming_limit_verify(tmp_path: Path,
                                                               size: int) -> None:
    """A file is read as its own size (``_head``), not as the 8 MiB limit: the same bytes,
    the same whole-or-streamed decision, the same hash check."""
    data = _part10(size)[:size]
    (tmp_path / "k").write_bytes(data)
    store = GrowingFileStore(tmp_path)
    ref = InstanceRef("1.2", "1.2.3", "1.2.840.10008.1.2.1", "k",
                      hashlib.sha256(data).hexdigest())
    stored = open_verified(store, ref, stream_above=4096)
    assert stored is not None and stored.size == size
    assert stored.streamed == (size > 4096)
    assert b"".join(stored.chunks()) == data
    (tmp_path / "k").write_bytes(data[:-1] + b"\xff")
    assert open_verified(store, ref, stream_above=4096) is None


def test_a_file_longer_than_its_size_said_is_read_to_its_end(tmp_path: Path) -> None:
    data = _part10(3000)
    (tmp_path / "k").write_bytes(data)
    grown = data + b"\x07" * 500
    store = GrowingFileStore(tmp_path, grow=b"\x07" * 500)
    ref = InstanceRef("1.2", "1.2.3", "1.2.840.10008.1.2.1", "k",
                      hashlib.sha256(grown).hexdigest())
    stored = open_verified(store, ref, stream_above=4096)
    assert stored is not None and stored.read() == grown


def _again(store: MemoryStore, data: bytes) -> tuple[InstanceRef, InstanceRef]:
    """A matched instance whose object was replaced: its old key is gone, its new one holds
    the bytes sent again (as ``keep`` leaves it once the new row has committed)."""
    old = InstanceRef("1.2", "1.2.3", "1.2.840.10008.1.2.1", "k.old", "0" * 64)
    store.objects["k.new"] = data
    new = InstanceRef("1.2", "1.2.3", "1.2.840.10008.1.2", "k.new",
                      hashlib.sha256(data).hexdigest())
    return old, new


def test_an_instance_stored_again_since_it_matched_is_sent_as_it_is_now(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    data = _part10(4096)
    old, new = _again(store, data)
    asked: list[InstanceRef] = []

    def current(ref: InstanceRef) -> InstanceRef:
        asked.append(ref)
        return new

    with caplog.at_level(logging.INFO, logger=read.__name__):
        stored = open_verified(store, old, current=current)
    assert stored is not None and stored.ref is new and stored.read() == data
    assert asked == [old]
    assert "stored again since it matched" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "1.2.3" not in caplog.text  # no UIDs in the log


def test_an_instance_gone_from_the_index_is_not_an_unreadable_object(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    old, _ = _again(store, _part10(4096))
    with caplog.at_level(logging.INFO, logger=read.__name__):
        assert open_verified(store, old, current=lambda ref: None) is None
    assert "deleted since it matched" in caplog.text
    assert "unreadable" not in caplog.text


@pytest.mark.parametrize("case", ["same-row", "index-down", "gone-again"])
def test_an_object_still_missing_is_unreadable(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The index names the same key, cannot answer, or names a key that is gone too (sent
    again twice: looked up once only): the object is unreadable, an ERROR, as before."""
    from mimic_server.errors import OutOfResources

    store = MemoryStore()
    old, new = _again(store, _part10(4096))
    calls = 0

    def current(ref: InstanceRef) -> InstanceRef:
        nonlocal calls
        calls += 1
        if case == "index-down":
            raise OutOfResources("index unavailable")
        if case == "gone-again":
            del store.objects["k.new"]
            return new
        return old

    with caplog.at_level(logging.ERROR, logger=read.__name__):
        assert open_verified(store, old, current=current) is None
    assert calls == 1
    assert "stored object unreadable" in caplog.text


def test_a_retrieve_sends_the_version_stored_now() -> None:
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from mimic_server.dimse.raw_send import StoredDataset
    from mimic_server.dimse.retrieve import datasets
    from tests.data import ct_small

    data = ct_small().read_bytes()
    store = MemoryStore()
    store.objects["k.new"] = data
    old = InstanceRef("1.2", "1.2.3", ExplicitVRLittleEndian, "k.old", "0" * 64)
    new = InstanceRef("1.2", "1.2.3", ImplicitVRLittleEndian, "k.new",
                      hashlib.sha256(data).hexdigest())
    [sent] = datasets(store, [old], current=lambda ref: new)
    assert isinstance(sent, StoredDataset)
    [unsent] = datasets(store, [old])  # without the index's current row: a failed one
    assert not isinstance(unsent, StoredDataset) and unsent.SOPInstanceUID == "1.2.3"


def test_an_instance_sent_again_into_another_series_is_not_what_matched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A correction that moved the instance (another study or series): the retrieve of the
    study that matched does not send what is now another study's object."""
    store = MemoryStore()
    data = _part10(4096)
    old = InstanceRef("1.2", "1.2.3", "1.2.840.10008.1.2.1", "ab/1.1/1.1.1/1.2.3.a.dcm", "0" * 64)
    store.objects["cd/1.9/1.9.1/1.2.3.b.dcm"] = data
    moved = InstanceRef("1.2", "1.2.3", "1.2.840.10008.1.2.1", "cd/1.9/1.9.1/1.2.3.b.dcm",
                        hashlib.sha256(data).hexdigest())
    same = InstanceRef("1.2", "1.2.3", "1.2.840.10008.1.2.1", "ab/1.1/1.1.1/1.2.3.c.dcm",
                       hashlib.sha256(data).hexdigest())
    store.objects[same.object_key] = data
    with caplog.at_level(logging.INFO, logger=read.__name__):
        assert open_verified(store, old, current=lambda ref: moved) is None
        assert open_verified(store, old, current=lambda ref: same) is not None
    assert "moved to another series since it matched" in caplog.text
    assert "unreadable" not in caplog.text

    from mimic_server.dimse.retrieve import datasets

    [sub_operation] = datasets(store, [old], current=lambda ref: moved)
    assert list(sub_operation.keys()) == [0x00080018]  # a stand-in: counted failed, not sent
