"""A small file written whole or not at all: the certificates, keys and bindings of the
development PKI, the user file.

Written in place, a full disk or a crash midway left such a file cut short: a certificate
beside its key that ``certs init`` took as made and the server could not load, a user file
no longer TOML that refused every user. A leaf: it imports no other room.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_whole(path: Path, data: bytes, mode: int) -> None:
    """``data`` as a new file of ``mode`` (O_EXCL: an existing file's mode is never kept),
    fsynced, renamed over ``path``, and the rename made durable: ``path`` holds all of it or
    is as it was, whatever stops the write. Readers (the certificate watcher, the user file's
    reload) never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
