"""A large C-STORE's spool file holds the object as kept, and the file store names that file
instead of copying it; anything short of a whole, sound, nameable spool is copied as before."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import struct
import tempfile
from pathlib import Path
from typing import IO, Any

import pytest

from mimic_server.archive.ingest import SpooledChunks
from mimic_server.dimse import receiving
from mimic_server.dimse.received import _from_spool
from mimic_server.dimse.receiving import ReceivingDataSet
from mimic_server.errors import CannotUnderstand, OutOfResources
from mimic_server.storage import filesystem
from mimic_server.storage.filesystem import FilesystemStore
from mimic_server.storage.memory import MemoryStore
from tests.spooled import FILE_META, data_set, spooled


def _store(tmp_path: Path) -> FilesystemStore:
    return FilesystemStore(tmp_path / "objects", spare_files=0)


def _incoming(store: FilesystemStore) -> list[Path]:
    """Files in the store's temporary directory that are not spares (empty, unused)."""
    return [p for p in store._tmp.iterdir() if p not in store._spares]


def _descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


class _NotIterable(SpooledChunks):
    """Chunks whose bytes must not be read: the store is to name the file, not copy it."""

    def __iter__(self) -> Any:
        raise AssertionError("the spool was read back instead of named")


def test_the_spool_holds_the_object_as_kept_and_the_data_set_is_read_back_alone(
    tmp_path: Path,
) -> None:
    data = data_set()
    received = spooled(tmp_path, data)
    assert received.spool is not None
    fd = received.whole_file()
    assert fd is not None and fd != received.spool.fileno()  # a descriptor of its own
    try:
        assert os.fstat(fd).st_ino == os.fstat(received.spool.fileno()).st_ino
        assert os.pread(fd, len(FILE_META) + len(data) + 1, 0) == FILE_META + data
    finally:
        os.close(fd)
    assert b"".join(received.chunks()) == data
    assert received.dataset_start == len(FILE_META)


def test_a_spooled_object_is_named_by_the_file_store_not_copied(tmp_path: Path) -> None:
    data = data_set()
    received = spooled(tmp_path, data)
    obj = _from_spool(received)
    assert bytes(obj.dataset) == data  # the header was parsed from the data set alone
    chunks = obj.chunks
    assert isinstance(chunks, SpooledChunks)
    store = _store(tmp_path)
    copied = store.put("s/copied.dcm", [b"x"], None)  # an ordinary put, for its mode
    assert copied == 1
    descriptors = _descriptors()

    size = store.put("s/named.dcm", _NotIterable(chunks.file_meta, chunks.spool), None)

    assert received.spool is not None
    spool_inode = os.fstat(received.spool.fileno()).st_ino
    named = store.root / "s/named.dcm"
    assert os.stat(named).st_ino == spool_inode
    assert size == obj.size == len(FILE_META) + len(data)
    kept = named.read_bytes()
    assert kept == FILE_META + data
    assert hashlib.sha256(kept).hexdigest() == obj.sha256
    mode = stat.S_IMODE(os.stat(named).st_mode)
    assert mode == stat.S_IMODE(os.stat(store.root / "s/copied.dcm").st_mode)
    assert _incoming(store) == []
    assert _descriptors() == descriptors  # the store closed the spool's it was given
    assert (store.spools_named, store.spools_copied) == (1, 0)
    spare = store._spares[0]  # the put's temporary file, not written: the next put's
    assert spare.stat().st_size == 0
    spare_inode = spare.stat().st_ino
    store.put("s/next.dcm", [b"next"], None)
    assert (store.root / "s/next.dcm").stat().st_ino == spare_inode
    received.discard()  # the association releases its spool: the object stays
    assert named.read_bytes() == kept
    assert os.stat(named).st_nlink == 1


def test_the_named_object_is_made_durable_before_the_put_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    received = spooled(tmp_path, data_set())
    store = _store(tmp_path)
    store.put("s/warm.dcm", [b"x"], None)  # its directories now known durable
    synced: list[int] = []
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    store.put("s/named.dcm", _from_spool(received).chunks, None)
    assert received.spool is not None
    spool = os.fstat(received.spool.fileno()).st_ino  # the object is the spool file
    assert synced == [spool, os.stat(store.root / "s").st_ino]


def test_a_failed_fsync_leaves_nothing_under_the_key_nor_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    received = spooled(tmp_path, data_set())
    store = _store(tmp_path)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OutOfResources):
        store.put("s/named.dcm", _from_spool(received).chunks, None)
    assert not (store.root / "s/named.dcm").exists()
    assert _incoming(store) == []
    assert (store.spools_named, store.spools_copied) == (0, 0)  # nothing kept
    assert received.spool is not None and os.fstat(received.spool.fileno()).st_nlink == 0


def _copied(store: FilesystemStore, received: ReceivingDataSet, key: str) -> Path:
    """Put the spooled object; check it was copied whole; its path."""
    size = store.put(key, _from_spool(received).chunks, None)
    path = store.root / key
    assert received.spool is not None and not received.spool.closed
    assert os.stat(path).st_ino != os.fstat(received.spool.fileno()).st_ino
    assert path.read_bytes() == FILE_META + b"".join(received.chunks())
    assert size == path.stat().st_size
    return path


def test_a_spool_on_another_file_system_is_copied_and_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    tried: list[Path] = []

    def elsewhere(fd: int, path: Path) -> None:
        tried.append(path)
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(filesystem, "give_name", elsewhere)
    store = _store(tmp_path)
    data = data_set()
    with caplog.at_level(logging.INFO, logger=filesystem.__name__):
        _copied(store, spooled(tmp_path, data), "s/1.dcm")
        _copied(store, spooled(tmp_path, data), "s/2.dcm")
    assert len(tried) == 1  # never tried again in this store
    said = [r for r in caplog.records if "copied from their spool" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert _incoming(store) == []
    assert (store.spools_named, store.spools_copied) == (0, 2)


def test_a_spool_that_cannot_be_named_this_once_is_copied_and_the_next_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = filesystem.give_name
    calls = []

    def once_failing(fd: int, path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.EMLINK, os.strerror(errno.EMLINK))
        real(fd, path)

    monkeypatch.setattr(filesystem, "give_name", once_failing)
    store = _store(tmp_path)
    data = data_set()
    _copied(store, spooled(tmp_path, data), "s/1.dcm")
    second = spooled(tmp_path, data)
    store.put("s/2.dcm", _from_spool(second).chunks, None)
    assert second.spool is not None
    assert os.stat(store.root / "s/2.dcm").st_ino == os.fstat(second.spool.fileno()).st_ino


def test_a_spool_that_is_an_ordinary_temporary_file_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_tmpfile(directory: Path) -> tuple[IO[bytes], bool]:
        return tempfile.TemporaryFile(dir=directory), False

    monkeypatch.setattr(receiving, "open_anonymous", no_tmpfile)
    received = spooled(tmp_path, data_set())
    assert received.whole_file() is None
    _copied(_store(tmp_path), received, "s/1.dcm")


def test_a_spool_not_finished_or_refused_is_never_offered(tmp_path: Path) -> None:
    data = data_set()
    unfinished = spooled(tmp_path, data, finish=False)
    assert unfinished.whole_file() is None  # the walk has not yet seen the data set's end
    unfinished.finish()
    offered = unfinished.whole_file()
    assert offered is not None
    os.close(offered)

    cut = spooled(tmp_path, data[:-10], finish=False)
    with pytest.raises(CannotUnderstand):
        cut.finish()
    assert cut.whole_file() is None

    too_large = spooled(tmp_path, data, limit=len(data) - 1, finish=False)
    assert too_large.too_large and too_large.whole_file() is None

    dropped = spooled(tmp_path, data)
    dropped.discard()
    assert dropped.whole_file() is None


def test_other_stores_read_the_spool_back_as_often_as_they_need(tmp_path: Path) -> None:
    data = data_set()
    chunks = _from_spool(spooled(tmp_path, data)).chunks
    store = MemoryStore()
    store.put("a", chunks, None)
    store.put("b", chunks, None)  # a retried put reads it again from the start
    assert store.objects["a"] == store.objects["b"] == FILE_META + data


def _default_acl(directory: Path, *, named_group: int | None) -> None:
    """A default ACL on ``directory`` (``system.posix_acl_default``, version 2): owner rwx,
    group r-x, others nothing, and with ``named_group`` that group r-x (and a mask)."""
    undefined = 0xFFFFFFFF
    entries = [(0x01, 7, undefined), (0x04, 5, undefined)]  # user::rwx, group::r-x
    if named_group is not None:
        entries += [(0x08, 5, named_group), (0x10, 5, undefined)]  # group:N:r-x, mask::r-x
    entries.append((0x20, 0, undefined))  # other::---
    directory.mkdir(parents=True)
    os.setxattr(directory, "system.posix_acl_default",
                struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries))


def test_a_spool_that_would_keep_other_acls_than_the_store_gives_is_copied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    _default_acl(tmp_path / "objects", named_group=4343)
    store = _store(tmp_path)
    with caplog.at_level(logging.INFO, logger=filesystem.__name__):
        path = _copied(store, spooled(tmp_path, data_set()), "s/1.dcm")
    assert "system.posix_acl_access" in os.listxattr(path)  # as every object here gets
    said = [r.getMessage() for r in caplog.records if "copied from their spool" in r.getMessage()]
    assert len(said) == 1 and "ACL" in said[0]
    assert (store.spools_named, store.spools_copied) == (0, 1)


def test_a_named_spool_takes_the_mode_the_store_gives_not_the_umasks(tmp_path: Path) -> None:
    _default_acl(tmp_path / "objects", named_group=None)  # no access ACL: a mode alone
    store = _store(tmp_path)
    received = spooled(tmp_path, data_set())
    store.put("s/1.dcm", _from_spool(received).chunks, None)
    path = store.root / "s/1.dcm"
    assert received.spool is not None
    assert os.stat(path).st_ino == os.fstat(received.spool.fileno()).st_ino
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # the default ACL's, not 0600 or 0644
    assert "system.posix_acl_access" not in os.listxattr(path)


def test_a_default_acl_both_directories_inherit_leaves_the_spool_named(tmp_path: Path) -> None:
    """The spool (created 0600) and the put's file (0666) get access ACLs that differ in
    their mask alone; once the spool has the put's mode they are alike: named."""
    data = tmp_path / "data"
    _default_acl(data, named_group=4343)
    store = FilesystemStore(data / "objects", spare_files=0)
    received = spooled(data, data_set())
    store.put("s/1.dcm", _from_spool(received).chunks, None)
    path = store.root / "s/1.dcm"
    assert received.spool is not None
    assert os.stat(path).st_ino == os.fstat(received.spool.fileno()).st_ino
    acl = os.getxattr(path, "system.posix_acl_access")
    copied = store.root / "s/2.dcm"
    store.put("s/2.dcm", [b"x"], None)
    assert acl == os.getxattr(copied, "system.posix_acl_access")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(copied.stat().st_mode)
    assert (store.spools_named, store.spools_copied) == (1, 0)


def test_a_spool_that_would_keep_another_group_than_a_setgid_store_gives_is_copied(
    tmp_path: Path,
) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    group = 4242 if os.getegid() != 4242 else 4343
    os.chown(objects, -1, group)  # the tests run as root (CI): any group will do
    objects.chmod(0o2775)
    store = _store(tmp_path)
    path = _copied(store, spooled(tmp_path, data_set()), "s/1.dcm")
    assert path.stat().st_gid == group  # as every object here gets
    assert (store.spools_named, store.spools_copied) == (0, 1)


def _mapped(inode: int) -> bool:
    """Whether this process maps a file of that inode (``/proc/self/maps``)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[4] == str(inode):
            return True
    return False


def test_the_map_the_header_was_read_through_goes_with_the_spool(tmp_path: Path) -> None:
    """A failed C-STORE's received object can outlive its handler in a cycle through the
    exception's traceback (a future's exception holds the frame that holds the future), so
    releasing the spool closes the map too: the file's disk is not held until a collection."""
    received = spooled(tmp_path, data_set())
    assert received.spool is not None
    inode = os.fstat(received.spool.fileno()).st_ino
    kept_alive = [_from_spool(received)]  # as a traceback's frame would hold it
    assert _mapped(inode)
    descriptors = _descriptors()

    received.discard()

    assert not _mapped(inode)
    assert len(_descriptors()) == len(descriptors) - 2  # the spool's and the map's own
    with pytest.raises(ValueError):
        kept_alive[0].dataset.tobytes()  # released: nobody reads it after the answer
