"""The file store's temporary files: spares taken by puts and made ahead; each store's own
directory, locked for its life, swept only once its process is gone."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

from mimic_server.errors import OutOfResources
from mimic_server.storage.filesystem import FilesystemStore


def _incoming(root: Path) -> list[Path]:
    """Temporary files (spares, in-flight objects) of every store on ``root``."""
    return [p for p in (root / ".incoming").rglob("*") if p.is_file() and p.suffix != ".lock"]


def _wait_for_spares(root: Path, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(_incoming(root)) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def _settled(store: FilesystemStore) -> None:
    deadline = time.monotonic() + 10
    while store._refilling and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not store._refilling



def _record_directory_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The directories fsynced from now on, in order (the fsyncs still happen)."""
    synced: list[Path] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced

def test_puts_use_spares_made_ahead(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = FilesystemStore(root, spare_files=4)
    for n in range(10):
        store.put(f"a/{n}.dcm", [b"x" * n, memoryview(b"yz")], "0" * 64)
        _wait_for_spares(root, 2)
    for n in range(10):
        with store.open(f"a/{n}.dcm") as fh:
            assert fh.read() == b"x" * n + b"yz"  # a spare holds nothing of its own
    _settled(store)
    spares = _incoming(root)
    assert 1 <= len(spares) <= 4 and all(p.stat().st_size == 0 for p in spares)
    assert sorted(store.iter_keys()) == sorted(f"a/{n}.dcm" for n in range(10))


def test_a_gone_stores_files_are_swept_at_start(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = FilesystemStore(root, spare_files=4)
    store.put("a/1.dcm", [b"data"], "0" * 64)
    _settled(store)
    assert _incoming(root)
    store._lock.close()  # what the kernel does when the process ends
    FilesystemStore(root, spare_files=0)  # (a store with spares makes its own at once)
    assert not _incoming(root)
    assert list(FilesystemStore(root, spare_files=0).iter_keys()) == ["a/1.dcm"]
    assert not store._tmp.exists() and not store._lock_path.exists()


def test_listing_names_only_keys_and_sets_foreign_files_apart(tmp_path: Path) -> None:
    """A file no put made whose name is no key (e2fsck's lost+found/#1234, a desktop's
    .DS_Store) is not listed as a key: reconcile would take it for an orphan whose delete
    the store refuses (KeyError). Given a list, the listing names it there."""
    root = tmp_path / "objects"
    store = FilesystemStore(root, spare_files=0)
    store.put("ab/1.2/1.2.3/1.2.3.4.0.dcm", [b"data"], None)
    (root / "lost+found").mkdir()
    (root / "lost+found" / "#1234").write_bytes(b"recovered")
    (root / ".DS_Store").write_bytes(b"finder")
    (root / "ab" / "1.2" / "...").write_bytes(b"stray")
    foreign: list[str] = []
    assert list(store.iter_keys(foreign)) == ["ab/1.2/1.2.3/1.2.3.4.0.dcm"]
    assert sorted(foreign) == [".DS_Store", "ab/1.2/...", "lost+found/#1234"]
    assert list(store.iter_keys()) == ["ab/1.2/1.2.3/1.2.3.4.0.dcm"]


def test_abandoned_layouts_are_swept(tmp_path: Path) -> None:
    """A flat file (the layout before per-store directories) and a directory whose lock
    file is gone are leftovers of no living store."""
    root = tmp_path / "objects"
    incoming = root / ".incoming"
    incoming.mkdir(parents=True)
    (incoming / "0123abcd").write_bytes(b"old layout")
    (incoming / "deadbeef").mkdir()
    (incoming / "deadbeef" / "cafe").write_bytes(b"half written")
    FilesystemStore(root, spare_files=0)
    assert not _incoming(root)
    assert not (incoming / "deadbeef").exists()


def test_in_flight_files_survive_another_store_opening(tmp_path: Path) -> None:
    """`mimic reconcile` opens a store on the server's directory while a put is being
    written: the put must complete, and the other store must not see its file as a leftover.
    """
    root = tmp_path / "objects"
    server = FilesystemStore(root, spare_files=0)
    others: list[FilesystemStore] = []

    def chunks():  # type: ignore[no-untyped-def]
        yield b"first half, "
        others.append(FilesystemStore(root, spare_files=0))  # sweeps at start
        assert others[0].sweep_incoming() == 0
        yield b"second half"

    server.put("a/1.dcm", chunks(), "0" * 64)
    with server.open("a/1.dcm") as fh:
        assert fh.read() == b"first half, second half"
    others[0].close()
    server.close()
    assert not list((root / ".incoming").iterdir())


def test_without_spares_puts_create_their_own(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = FilesystemStore(root, spare_files=0)
    store.put("a/1.dcm", [b"data"], "0" * 64)
    with store.open("a/1.dcm") as fh:
        assert fh.read() == b"data"
    assert not _incoming(root)


def test_spares_swept_by_another_store_do_not_fail_puts(tmp_path: Path) -> None:
    """Spares removed from under the store (by hand, or by an older version's sweep): its
    puts still succeed."""
    root = tmp_path / "objects"
    server = FilesystemStore(root, spare_files=4)
    server.put("a/0.dcm", [b"first"], "0" * 64)
    _settled(server)
    assert server._spares
    for spare in _incoming(root):
        spare.unlink()
    for n in range(1, 8):
        server.put(f"a/{n}.dcm", [b"data"], "0" * 64)
    assert sorted(server.iter_keys()) == sorted(f"a/{n}.dcm" for n in range(8))


def test_put_fsyncs_every_directory_it_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after Success must not lose a new study's or series' directory entry: the
    object's directory and the parent of each directory the put created are fsynced."""
    root = tmp_path / "objects"
    store = FilesystemStore(root, spare_files=0)
    store.put("ab/study/series-1/one.dcm", [b"x"], "0" * 64)  # "ab" and "study" now exist
    synced = _record_directory_fsyncs(monkeypatch)
    store.put("ab/study/series-2/deeper/two.dcm", [b"y"], "0" * 64)
    series = root / "ab" / "study" / "series-2"
    assert set(synced) == {root / "ab" / "study", series, series / "deeper"}
    synced.clear()
    store.put("ab/study/series-2/deeper/three.dcm", [b"z"], "0" * 64)
    assert synced == [series / "deeper"]  # nothing new created: only the object's directory


def test_put_fsyncs_directories_a_concurrent_put_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Put A created ``ab/study/series`` and has not fsynced their parents yet; put B, which
    finds them made, must not answer Success before they are durable."""
    root = tmp_path / "objects"
    store = FilesystemStore(root, spare_files=0)
    (root / "ab" / "study" / "series").mkdir(parents=True)  # as put A's mkdir left them
    synced = _record_directory_fsyncs(monkeypatch)
    store.put("ab/study/series/one.dcm", [b"x"], "0" * 64)
    assert set(synced) == {root, root / "ab", root / "ab" / "study", root / "ab/study/series"}
    synced.clear()
    store.put("ab/study/series/two.dcm", [b"y"], "0" * 64)
    assert synced == [root / "ab" / "study" / "series"]  # the chain is known durable


def test_a_known_directory_removed_under_the_store_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next object of a known series skips the directory look-ups; if that directory
    was removed meanwhile (by hand), the put makes it again and fsyncs the chain anew."""
    root = tmp_path / "objects"
    store = FilesystemStore(root, spare_files=0)
    store.put("ab/study/series/one.dcm", [b"x"], "0" * 64)
    (root / "ab" / "study" / "series" / "one.dcm").unlink()
    (root / "ab" / "study" / "series").rmdir()
    (root / "ab" / "study").rmdir()
    synced = _record_directory_fsyncs(monkeypatch)
    store.put("ab/study/series/two.dcm", [b"y"], "0" * 64)
    assert (root / "ab" / "study" / "series" / "two.dcm").read_bytes() == b"y"
    assert set(synced) == {root, root / "ab", root / "ab" / "study", root / "ab/study/series"}
    assert list(store.iter_keys()) == ["ab/study/series/two.dcm"]


def test_the_object_is_fsynced_under_its_key_then_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is renamed into place before its fsync (the file system can then make the
    data and the new name durable together), and its directory is fsynced after it."""
    root = tmp_path / "objects"
    store = FilesystemStore(root, spare_files=0)
    store.put("ab/study/series/one.dcm", [b"x"], "0" * 64)  # the chain is known durable
    synced: list[tuple[str, Path]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        kind = "directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, Path(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store.put("ab/study/series/two.dcm", [b"y" * 1000, b"z"], "0" * 64)
    series = root / "ab" / "study" / "series"
    assert synced == [("file", series / "two.dcm"), ("directory", series)]
    assert (series / "two.dcm").read_bytes() == b"y" * 1000 + b"z"



@pytest.mark.parametrize("failing", ["file", "directory"])
def test_a_failed_fsync_leaves_nothing_under_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """An object that could not be made durable, its own fsync or its directory's failing
    after the rename, is refused and left neither under its key nor in the temporary
    directory."""
    root = tmp_path / "objects"
    store = FilesystemStore(root, spare_files=0)
    store.put("ab/study/series/one.dcm", [b"x"], "0" * 64)
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode) == (failing == "directory"):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OutOfResources, match="Input/output error"):
        store.put("ab/study/series/two.dcm", [b"y"], "0" * 64)
    assert not (root / "ab" / "study" / "series" / "two.dcm").exists()
    assert sorted(store.iter_keys()) == ["ab/study/series/one.dcm"]
    assert _incoming(root) == []


def _statvfs(free_blocks: int, free_inodes: int) -> os.statvfs_result:
    """A file system of 4 KiB blocks with this much free (for root and for others alike)."""
    # bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax
    return os.statvfs_result(
        (4096, 4096, 1 << 20, free_blocks, free_blocks, 1 << 16, free_inodes, free_inodes,
         0, 255)
    )


@pytest.mark.parametrize(("free_blocks", "free_inodes", "reason"), [
    (0, 1000, "file system is full"),
    (100, 1000, "file system is full"),  # 400 KiB: no object fits
    (1 << 16, 0, "no free inodes"),
])
def test_check_refuses_a_full_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_blocks: int, free_inodes: int,
    reason: str,
) -> None:
    """The readiness probe's question: a full file system refuses every object 0xA700
    while the directory is still writable by its mode, so the store is not ready."""
    store = FilesystemStore(tmp_path / "objects", spare_files=0)
    try:
        store.check()
        monkeypatch.setattr(os, "statvfs", lambda path: _statvfs(free_blocks, free_inodes))
        with pytest.raises(OutOfResources, match=reason):
            store.check()
        monkeypatch.setattr(os, "statvfs", lambda path: _statvfs(1 << 16, 1000))  # 256 MiB
        store.check()
    finally:
        store.close()


def test_a_read_only_store_reads_and_writes_nothing(tmp_path: Path) -> None:
    """``mimic reconcile`` without ``--fix`` opens the store so: a read-only copy of the
    object directory (a backup, a read-only mount) can be checked. Every store claimed a
    temporary directory and its lock in ``.incoming`` first: EROFS, 'object directory
    unusable', exit 2."""
    writer = FilesystemStore(tmp_path)
    writer.put("ab/1.2/1.2.3/1.2.3.4.0000000000000000.dcm", [b"object"], None)
    writer.close()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    reader = FilesystemStore(tmp_path, writable=False)
    try:
        assert list(reader.iter_keys()) == ["ab/1.2/1.2.3/1.2.3.4.0000000000000000.dcm"]
        with reader.open("ab/1.2/1.2.3/1.2.3.4.0000000000000000.dcm") as fh:
            assert fh.read() == b"object"
        with pytest.raises(OutOfResources):
            reader.put("ab/1.2/1.2.3/1.2.3.5.0000000000000000.dcm", [b"x"], None)
        with pytest.raises(OutOfResources):
            reader.delete("ab/1.2/1.2.3/1.2.3.4.0000000000000000.dcm")
    finally:
        reader.close()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    absent = FilesystemStore(tmp_path / "absent", writable=False)  # stored nothing yet
    try:
        assert list(absent.iter_keys()) == []
        with pytest.raises(KeyError):
            absent.open("ab/1.2/1.2.3/1.2.3.4.0000000000000000.dcm")
    finally:
        absent.close()
    assert not (tmp_path / "absent").exists()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError):
        FilesystemStore(tmp_path / "file", writable=False)


def test_a_store_for_no_puts_makes_no_spares_and_a_closed_store_leaves_nothing(
    tmp_path: Path,
) -> None:
    """``mimic serve``'s supervisor opens the store only to answer ``/readyz``: it makes no
    spare files (it made 16 that nothing ever took). Closed (a clean stop), a store leaves
    nothing in ``.incoming``, its lock file included; a store that puts made its spares."""
    from mimic_server.backends import close_object_store, open_object_store
    from mimic_server.config import Settings

    settings = Settings(data_dir=tmp_path)
    root = settings.objects_dir
    supervisor = open_object_store(settings, warn=False, puts=False)
    worker = open_object_store(settings, warn=False)
    _wait_for_spares(root, 16)
    assert isinstance(worker, FilesystemStore)
    _settled(worker)
    spares = _incoming(root)
    assert len(spares) == 16 and {p.parent for p in spares} == {worker._tmp}  # its alone
    worker.put("a/1.dcm", [b"data"], None)
    supervisor.check()  # its readiness question is still answered
    close_object_store(worker)
    close_object_store(supervisor)
    assert list((root / ".incoming").iterdir()) == []
    assert list(FilesystemStore(root, spare_files=0, writable=False).iter_keys()) == ["a/1.dcm"]
