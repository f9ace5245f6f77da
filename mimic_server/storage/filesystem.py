"""Objects as files under one directory: the embedded mode's object store.

A put writes to a temporary file in the same file system, renames it into place, then
fsyncs it and its directory, and the parent of every directory it had to create: it returns
only once the object is whole and durable under its key. The rename comes before the file's
fsync, not after it: ext4 with its journal (measured, ``data=ordered``) then commits the
data, the inode and the new name in one journal commit (fsync before the rename took two,
one per fsync), and ext4 without a journal, which writes a new file's directory entry in
the file's own fsync, writes the object's directory rather than the temporary directory
that every put and the spare-making thread share, so the directory's fsync has nothing left
to write but the disk's cache flush. A crash before the put returns can leave something
other than the bytes sent under the new key (fewer, or zeroes); nothing was acknowledged,
and no index row names the key (the row is committed after the put, invariant 1), so
readers, who find objects through the index, never see it, and ``mimic reconcile`` removes
it as an orphan.

A large C-STORE's spool file is the object already (``storage/anonymous.py``): the put gives
it a name in the temporary directory instead of copying it, then goes on as for a file it
wrote (rename, fsyncs). It does so only where the spool comes out as a file made here would
(owner, group, ACL, security label; the mode it is given): the put's own temporary file is
opened as always, compared with, and left unwritten for the next put. Where it cannot
(another file system, other attributes: then never again in this store), the bytes are
copied as for any other put.

Creating a file right after an fsync waits for the file system's journal: about 0.9 ms on
the benchmark machine, half of a put. The temporary files are therefore created ahead, a few
at a time, by a background thread of the store (started once, woken when the spares run
low: starting a thread per refill made the put that started it wait for the new thread to
run); a put takes a spare one (or creates its own when none is left).

Several processes may open one directory at once (``mimic serve`` and ``mimic reconcile``),
so each store keeps its temporary files, spares included, in a directory of its own,
``.incoming/<id>/``, and holds an exclusive ``flock`` on ``.incoming/<id>.lock`` for its
life (the kernel releases it when the process dies, however it dies). A store sweeps only
the directories whose lock it can take: those of processes that are gone, never another
process's in-flight files. The lock file is made and locked before its directory exists,
so a directory without a lock file is abandoned.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from mimic_server.errors import OutOfResources
from mimic_server.storage.anonymous import give_name, made_alike

log = logging.getLogger(__name__)

#: Why an anonymous file cannot be named here, for this and every later one, beside another
#: file system (``EXDEV``, said as such): a file system or a process that forbids it.
_NEVER_NAMEABLE = frozenset({errno.EPERM, errno.EOPNOTSUPP})

_KEY = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*(/[0-9A-Za-z][0-9A-Za-z._-]*)*$")
_TMP = ".incoming"
_LOCK = ".lock"
#: Free space below which the readiness check calls the object directory's file system full:
#: no object of any size fits any more (a small CT image is half of it).
FULL_BELOW_BYTES = 1 << 20


class FilesystemStore:
    """An :class:`~mimic_server.storage.ObjectStore` on a local directory."""

    #: The index keeps each object's SHA-256; a file has nowhere of its own to keep it.
    records_sha256 = False

    def __init__(self, root: Path, fsync: bool = True, spare_files: int = 16, *,
                 writable: bool = True) -> None:
        """``writable=False``: reads only (``mimic reconcile`` without ``--fix``), so that a
        read-only copy can be checked: nothing is created or swept in ``root``, and
        :meth:`put` and :meth:`delete` raise OutOfResources."""
        self.root = root
        self.fsync = fsync
        self.writable = writable
        incoming = root / _TMP
        self._incoming = incoming
        if writable:
            incoming.mkdir(parents=True, exist_ok=True)
            self._lock, self._tmp = _claim_incoming(incoming)
            self.sweep_incoming()
        else:
            # None yet (an archive that has stored nothing): an empty store, as the writable
            # one that made it would be; a file in its place is no store at all.
            if root.exists() and not root.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(root))
            self._lock, self._tmp = None, incoming / "-"  # a name no listing yields
            spare_files = 0
        self._spare_target = spare_files
        self._spares: deque[Path] = deque()
        self._spares_lock = threading.Lock()
        self._refilling = False
        self._refill_wanted = threading.Event()
        self._refiller: threading.Thread | None = None
        self._closed = False
        #: Whether a spooled object's own file may still be named here (not copied).
        self._naming = os.path.isdir("/proc/self/fd")
        #: Spooled objects kept (durable under their key) by naming their spool file, and by
        #: copying it (large STOW-RS parts always, whose spool is not the object as kept).
        self.spools_named = 0
        self.spools_copied = 0
        #: Directories whose entry in their parent this process has fsynced: a directory a
        #: concurrent put created (and has not yet fsynced) is not in it.
        self._durable: set[Path] = set()
        if spare_files > 0:
            # Started with the store, not at the first put: the first object does not wait
            # for a thread to start, and the process's thread count is steady from here on.
            self._refilling = True
            self._refiller = threading.Thread(
                target=self._refill_loop, name="mimic-spare-files", daemon=True)
            self._refiller.start()
            self._refill_wanted.set()

    def sweep_incoming(self) -> int:
        """Remove temporary files of stores whose process is gone; they were never
        acknowledged. Returns how many files were removed."""
        removed = 0
        for entry in self._incoming.iterdir():
            name = entry.name
            if entry == self._tmp or name == self._lock_path.name:
                continue
            if name.endswith(_LOCK):
                removed += _sweep_if_unlocked(entry, self._incoming / name[: -len(_LOCK)])
            elif entry.is_dir():
                if not (self._incoming / (name + _LOCK)).exists():
                    removed += _remove_tree(entry)  # its lock went first: abandoned
            else:
                # A flat file: the layout before per-process directories (no lock to ask).
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed += 1
        return removed

    @property
    def _lock_path(self) -> Path:
        return self._tmp.with_name(self._tmp.name + _LOCK)

    def close(self) -> None:
        """Remove this store's temporary files and release its lock (also done for it,
        less tidily, by the next store that sweeps after this process ends)."""
        self._closed = True
        self._refill_wanted.set()
        with self._spares_lock:
            self._spares.clear()
        if self._lock is None:  # read-only: nothing of ours in the directory
            return
        _remove_tree(self._tmp)
        with contextlib.suppress(FileNotFoundError):
            self._lock_path.unlink()
        self._lock.close()

    def _path(self, key: str) -> Path:
        if not _is_key(key):
            raise KeyError(key)
        return self.root / key

    def _temporary_file(self) -> tuple[Path, str]:
        """A spare temporary file (opened for writing as is), else a new one."""
        with self._spares_lock:
            spare = self._spares.popleft() if self._spares else None
            if (len(self._spares) <= self._spare_target // 2 and not self._refilling
                    and not self._closed):
                self._refilling = True
                if self._refiller is None:
                    self._refiller = threading.Thread(
                        target=self._refill_loop, name="mimic-spare-files", daemon=True)
                    self._refiller.start()
                self._refill_wanted.set()
        if spare is not None:
            return spare, "r+b"
        return self._tmp / uuid.uuid4().hex, "xb"

    def _refill_loop(self) -> None:
        while True:
            self._refill_wanted.wait()
            self._refill_wanted.clear()
            if self._closed:
                return
            self._refill()

    def _refill(self) -> None:
        try:
            while True:
                with self._spares_lock:
                    if len(self._spares) >= self._spare_target:
                        return
                spare = self._tmp / uuid.uuid4().hex
                try:
                    open(spare, "xb").close()
                except OSError:
                    return  # the put that needs one creates its own, and reports the error
                with self._spares_lock:
                    self._spares.append(spare)
        finally:
            with self._spares_lock:
                self._refilling = False

    def put(self, key: str, chunks: Iterable[bytes | memoryview], sha256: str | None) -> int:
        path = self._path(key)
        if not self.writable:
            raise OutOfResources("object store opened read-only")
        tmp: Path | None = None
        spare: Path | None = None
        named: int | None = None  # the descriptor of a spool file given a name here
        placed = False
        try:
            tmp, handle = self._open_temporary()
            with handle as fh:
                whole_file = getattr(chunks, "whole_file", None)
                if whole_file is not None:
                    name, named = self._name_whole_file(whole_file, fh.fileno())
                    if name is not None:
                        spare, tmp = tmp, name  # the spare stays unwritten: given back
                if named is not None:
                    fd, size = named, os.fstat(named).st_size
                else:
                    fd, size = fh.fileno(), 0
                    for chunk in chunks:
                        fh.write(chunk)
                        size += len(chunk)
                    fh.flush()
                known = self._rename(tmp, path)
                placed = True
                self._make_durable(path, fd, known)
            if whole_file is not None:
                self._count(named=named is not None)
        except OSError as exc:
            with contextlib.suppress(OSError):
                # Under its key once renamed: never acknowledged, so never indexed.
                if placed:
                    path.unlink()
                elif tmp is not None:
                    tmp.unlink()
            raise OutOfResources(f"object store write failed: {exc.strerror}") from exc
        finally:
            if named is not None:
                os.close(named)
            if spare is not None:
                self._give_back(spare)
        return size

    def _name_whole_file(self, whole_file: Callable[[], int | None],
                         made_here: int) -> tuple[Path | None, int | None]:
        """Give a spooled object's own file (``chunks.whole_file()``: a large C-STORE's
        spool, ``storage/anonymous.py``) a temporary name here, if it comes out as the file
        ``made_here`` (this put's temporary file, not yet written) did: (that name, its
        descriptor, ours to close). (None, None): copy the chunks."""
        fd = whole_file() if self._naming else None
        if fd is None:
            return None, None
        elsewhere = ("the spool is on another file system (keep MIMIC_SPOOL_DIR on the "
                     "object store's)")
        try:
            made = os.fstat(made_here)
            if os.fstat(fd).st_dev != made.st_dev:
                self._stop_naming(elsewhere)
            else:
                # The mode first: an access ACL's mask follows it (a default ACL both
                # directories inherit gives the spool, created 0600, another mask).
                os.fchmod(fd, stat.S_IMODE(made.st_mode))
                if not made_alike(fd, made_here):
                    self._stop_naming("the spool directory gives files another owner, "
                                      "group, ACL or security label than the object "
                                      "directory")
                else:
                    tmp = self._tmp / uuid.uuid4().hex
                    give_name(fd, tmp)
                    return tmp, fd
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                self._stop_naming(elsewhere)
            elif exc.errno in _NEVER_NAMEABLE:
                self._stop_naming(os.strerror(exc.errno or 0))
            else:
                log.debug("a spool file could not be named: copied",
                          extra={"error": errno.errorcode.get(exc.errno or 0, "?")})
        os.close(fd)
        return None, None

    def _stop_naming(self, why: str) -> None:
        with self._spares_lock:
            said, self._naming = not self._naming, False
        if not said:
            log.info("large objects are copied from their spool into the object store, not "
                     "named there: %s", why)

    def _count(self, *, named: bool) -> None:
        with self._spares_lock:
            if named:
                self.spools_named += 1
            else:
                self.spools_copied += 1

    def _give_back(self, spare: Path) -> None:
        """A temporary file a put opened and did not write: a spare for the next."""
        with self._spares_lock:
            if not self._closed:
                self._spares.appendleft(spare)
                return
        with contextlib.suppress(OSError):
            spare.unlink()

    def _open_temporary(self) -> tuple[Path, BinaryIO]:
        """A spare temporary file opened for writing, else a new one."""
        tmp, mode = self._temporary_file()
        try:
            return tmp, open(tmp, mode)
        except FileNotFoundError:
            if mode == "xb":
                raise
        # A spare removed under us (by hand, or a store of an older version sweeping
        # .incoming wholesale): make a file of our own.
        tmp = self._tmp / uuid.uuid4().hex
        return tmp, open(tmp, "xb")

    def _rename(self, tmp: Path, path: Path) -> bool:
        """Rename ``tmp`` to ``path``, making its directories if need be; whether they were
        known durable already."""
        parent = path.parent
        # A directory this store has made durable already (the usual case: a series' next
        # object) needs no look-ups: rename, then fsync it alone.
        known = parent in self._durable
        if not known:
            _make_directories(parent)
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            if not known:
                raise
            # Removed under us (by hand): forget what we knew, make it again.
            self._durable.clear()
            known = False
            _make_directories(parent)
            os.replace(tmp, path)
        return known

    def _make_durable(self, path: Path, fd: int, known: bool) -> None:
        """fsync the object (under its key already: the file system makes the file and its
        new name durable in one go, module docstring), then the directories it needs."""
        if not self.fsync:
            return
        os.fsync(fd)
        if known:
            _fsync_dir(path.parent)
            return
        # The object's entry lives in its directory, and each directory of the chain lives
        # in its parent's entries: all of them must be durable before Success, including
        # those a concurrent put created and may not have fsynced yet.
        chain = [d for d in (path.parent, *path.parent.parents)
                 if d != self.root and d.is_relative_to(self.root)]
        pending = [d for d in chain if d not in self._durable]
        for directory in dict.fromkeys([path.parent, *(d.parent for d in pending)]):
            _fsync_dir(directory)
        self._durable.update(pending)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise OutOfResources(f"object store read failed: {exc.strerror}") from exc

    def delete(self, key: str) -> None:
        if not self.writable:
            raise OutOfResources("object store opened read-only")
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            # The store's contract (EPERM of an immutable file, EROFS, EIO): callers
            # (reconcile, the ingest's clean-up) handle OutOfResources, not every OSError.
            raise OutOfResources(f"object store delete failed: {exc.strerror}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def iter_keys(self, foreign: list[str] | None = None) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != _TMP]
            for name in filenames:
                key = (Path(dirpath) / name).relative_to(self.root).as_posix()
                # Not a name _path() takes (lost+found/#1234 after e2fsck, .DS_Store): no
                # put made it, and reconcile must not take it for an orphan it can delete.
                if _is_key(key):
                    yield key
                elif foreign is not None:
                    foreign.append(key)

    def check(self) -> None:
        """The directory and its ``.incoming`` exist, this process may create files there,
        and their file system is not full (one ``statvfs``): a full one refuses every
        C-STORE and STOW-RS 0xA700 while the directory is still writable by its mode."""
        for directory in (self.root, self._tmp):
            if not directory.is_dir():
                raise OutOfResources(f"object directory {directory.name or directory} is missing")
            if not os.access(directory, os.W_OK | os.X_OK):
                raise OutOfResources(f"object directory {directory.name} is not writable")
        try:
            fs = os.statvfs(self._tmp)
        except OSError:
            return  # no answer on space: the checks above stand
        # Root may write into the blocks reserved for it (ext4's 5 %), others may not.
        blocks = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail
        if blocks * fs.f_frsize < FULL_BELOW_BYTES:
            raise OutOfResources("object directory's file system is full")
        if fs.f_files > 0 and fs.f_favail == 0:  # f_files 0: a file system without a count
            raise OutOfResources("object directory's file system has no free inodes")


def _is_key(name: str) -> bool:
    """Whether ``name`` is a key this store takes (never one leaving its directory)."""
    return _KEY.match(name) is not None and ".." not in name


def _claim_incoming(incoming: Path) -> tuple[BinaryIO, Path]:
    """A new locked temporary directory under ``incoming``: (the held lock file, its path).

    The lock file is created, locked and then checked to still be the file at its path: a
    sweeper that took the free lock in between has removed it, and we start again.
    """
    while True:
        name = uuid.uuid4().hex
        lock_path = incoming / (name + _LOCK)
        lock = open(lock_path, "xb")  # noqa: SIM115 - held for the store's life
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            same = os.stat(lock_path).st_ino == os.fstat(lock.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            directory = incoming / name
            directory.mkdir()
            return lock, directory
        lock.close()


def _sweep_if_unlocked(lock_path: Path, directory: Path) -> int:
    """Remove ``directory`` and its lock file if no living process holds the lock."""
    try:
        lock = open(lock_path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return 0
    with lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # a living store's: never touch it
        removed = _remove_tree(directory)
        with contextlib.suppress(FileNotFoundError):
            lock_path.unlink()
        return removed


def _remove_tree(directory: Path) -> int:
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for leftover in directory.iterdir():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
    with contextlib.suppress(OSError):  # gone already, or a late spare: the next sweep's
        directory.rmdir()
    return removed


def _make_directories(directory: Path) -> list[Path]:
    """Create ``directory`` and any missing parents; return those that were missing,
    outermost first."""
    missing: list[Path] = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for level in reversed(missing):
        # Made by a concurrent put, perhaps not yet durable: it counts as ours to fsync.
        level.mkdir(exist_ok=True)
    return list(reversed(missing))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
