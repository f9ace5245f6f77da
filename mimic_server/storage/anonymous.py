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

import errno
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


def made_alike(fd: int, made_here: int) -> bool:
    """Whether the anonymous file ``fd`` has the owner, group and extended attributes (an
    access ACL, a security label) of ``made_here``, a file created where it is to be named.

    A file takes those from the directory it is created in (a setgid directory's group, a
    default ACL, a label), and the spool was created in another: named, it would keep them.
    The mode is not compared: the caller sets it (``os.fchmod``).
    """
    ours, theirs = os.fstat(fd), os.fstat(made_here)
    if (ours.st_uid, ours.st_gid) != (theirs.st_uid, theirs.st_gid):
        return False
    return _extended_attributes(fd) == _extended_attributes(made_here)


def _extended_attributes(fd: int) -> dict[str, bytes]:
    try:
        return {name: os.getxattr(fd, name) for name in os.listxattr(fd)}
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}  # a file system without them: alike
        raise
