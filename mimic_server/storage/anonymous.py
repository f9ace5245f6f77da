"""Anonymous files that the file store can give a name later: a large C-STORE's spool.

A file opened with ``O_TMPFILE`` has no name in any directory: nothing of it can be found on
disk, and the kernel frees it when its last descriptor closes, however the process ends.
Opened without ``O_EXCL``, it can still be given a name once (``linkat`` through
``/proc/self/fd/N`` with ``AT_SYMLINK_FOLLOW``, which needs no privilege). A large data set
is spooled into such a file behind the File Meta the archive writes, so that once it has
arrived whole, hashed and walked, the file store on the same file system names that file
instead of copying every byte of it into a new one (``filesystem.py``). Where the file
system has no ``O_TMPFILE``, the spool is an ordinary temporary file, which nothing names.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO

_O_TMPFILE = getattr(os, "O_TMPFILE", 0)


def open_anonymous(directory: Path) -> tuple[IO[bytes], bool]:
    """A new anonymous file in ``directory`` (mode 0600, read and write), and whether
    :func:`give_name` may name it."""
    if _O_TMPFILE:
        try:
            fd = os.open(directory, _O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError:
            pass  # the file system has no O_TMPFILE: an ordinary temporary file
        else:
            return open(fd, "w+b"), True
    return tempfile.TemporaryFile(dir=directory), False


def give_name(fd: int, path: Path) -> None:
    """Give the anonymous file open as ``fd`` the name ``path`` (which must not exist).

    Raises ``OSError``: ``EXDEV`` where ``path`` is on another file system, ``ENOENT``
    without ``/proc`` or for a file that may not be named.
    """
    # linkat(2) with AT_SYMLINK_FOLLOW: os.link calls plain link(2), which would link the
    # /proc entry itself (EXDEV), unless given a directory descriptor to resolve it from.
    descriptors = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), path, src_dir_fd=descriptors, follow_symlinks=True)
    finally:
        os.close(descriptors)


def creation_mode() -> int:
    """The mode an ordinary file created by this process gets (0o666 less its umask), read
    without setting the umask (``/proc/self/status``; other threads may be creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644
