"""Objects as files under one directory: the embedded mode's object store.

A put writes to a temporary file in the same file system, fsyncs it, renames it into place
and fsyncs the directory, so an object either exists whole and durable or not at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from mimic_server.errors import OutOfResources

_KEY = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*(/[0-9A-Za-z][0-9A-Za-z._-]*)*$")
_TMP = ".incoming"


class FilesystemStore:
    """An :class:`~mimic_server.storage.ObjectStore` on a local directory."""

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self._tmp = root / _TMP
        self._tmp.mkdir(parents=True, exist_ok=True)
        self.sweep_incoming()

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

    def put(self, key: str, chunks: Iterable[bytes | memoryview], sha256: str) -> int:
        path = self._path(key)
        tmp = self._tmp / uuid.uuid4().hex
        size = 0
        try:
            with open(tmp, "xb") as fh:
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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
