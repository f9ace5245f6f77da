"""Objects as files under one directory: the embedded mode's object store.

A put writes to a temporary file in the same file system, fsyncs it, renames it into place
and fsyncs the directory, so an object either exists whole and durable or not at all.

Creating a file right after an fsync waits for the file system's journal: about 0.9 ms on
the benchmark machine, half of a put. The temporary files are therefore created ahead, a few
at a time, by a short-lived background thread; a put takes a spare one (or creates its own
when none is left). Spares are empty files in ``.incoming``, removed at start like any
leftover there.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from mimic_server.errors import OutOfResources

_KEY = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*(/[0-9A-Za-z][0-9A-Za-z._-]*)*$")
_TMP = ".incoming"


class FilesystemStore:
    """An :class:`~mimic_server.storage.ObjectStore` on a local directory."""

    def __init__(self, root: Path, fsync: bool = True, spare_files: int = 16) -> None:
        self.root = root
        self.fsync = fsync
        self._tmp = root / _TMP
        self._tmp.mkdir(parents=True, exist_ok=True)
        self.sweep_incoming()
        self._spare_target = spare_files
        self._spares: deque[Path] = deque()
        self._spares_lock = threading.Lock()
        self._refilling = False

    def sweep_incoming(self) -> int:
        """Remove temporary files a crash left behind; they were never acknowledged."""
        removed = 0
        for leftover in self._tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        return removed

    def _path(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key:
            raise KeyError(key)
        return self.root / key

    def _temporary_file(self) -> tuple[Path, str]:
        """A spare temporary file (opened for writing as is), else a new one."""
        with self._spares_lock:
            spare = self._spares.popleft() if self._spares else None
            if len(self._spares) <= self._spare_target // 2 and not self._refilling:
                self._refilling = True
                threading.Thread(
                    target=self._refill, name="mimic-spare-files", daemon=True
                ).start()
        if spare is not None:
            return spare, "r+b"
        return self._tmp / uuid.uuid4().hex, "xb"

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

    def put(self, key: str, chunks: Iterable[bytes | memoryview], sha256: str) -> int:
        path = self._path(key)
        tmp, mode = self._temporary_file()
        size = 0
        try:
            try:
                handle = open(tmp, mode)  # noqa: SIM115 - closed by the `with` below
            except FileNotFoundError:
                if mode == "xb":
                    raise
                # A spare removed under us (another store opened on this directory sweeps
                # .incoming at its start, e.g. `mimic reconcile`): make a file of our own.
                tmp = self._tmp / uuid.uuid4().hex
                handle = open(tmp, "xb")  # noqa: SIM115 - closed by the `with` below
            with handle as fh:
                for chunk in chunks:
                    fh.write(chunk)
                    size += len(chunk)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
            if self.fsync:
                _fsync_dir(path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise OutOfResources(f"object store write failed: {exc.strerror}") from exc
        return size

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise OutOfResources(f"object store read failed: {exc.strerror}") from exc

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def iter_keys(self) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != _TMP]
            for name in filenames:
                yield (Path(dirpath) / name).relative_to(self.root).as_posix()

    def check(self) -> None:
        """The directory and its ``.incoming`` exist and this process may create files there."""
        for directory in (self.root, self._tmp):
            if not directory.is_dir():
                raise OutOfResources(f"object directory {directory.name or directory} is missing")
            if not os.access(directory, os.W_OK | os.X_OK):
                raise OutOfResources(f"object directory {directory.name} is not writable")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
