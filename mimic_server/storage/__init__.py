"""The object store: bytes under opaque keys, nothing else.

A store knows nothing of DICOM. Keys are chosen by the caller and never reused, so a ``put``
never overwrites the bytes an index row points at (see :mod:`mimic_server.storage.keys`).
Backends raise :class:`~mimic_server.errors.OutOfResources` for any failure to keep or read
bytes, and ``KeyError`` for a key that is not there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO, Protocol

__all__ = ["ObjectStore"]


class ObjectStore(Protocol):
    """Where archived objects live; filesystem in embedded mode, Azure Blob Storage in Azure."""

    #: Whether :meth:`put` keeps ``sha256`` (hex) next to the object, as metadata. Such a
    #: store is always given it; one that does not may be given None, and the ingest then
    #: hashes beside the put instead of before it.
    records_sha256: bool

    def put(self, key: str, chunks: Iterable[bytes | memoryview], sha256: str | None) -> int:
        """Store the concatenated chunks durably under ``key``; return the byte count.

        Returns only once the bytes would survive a crash. Chunks that offer
        ``whole_file()`` (a large C-STORE's spool, ``archive.ingest.SpooledChunks``) may be
        kept by naming that file instead of copying them, where the store can
        (``filesystem.py``); iterating them always gives the same bytes.
        """
        ...

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the object; ``KeyError`` if it is absent."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...

    def exists(self, key: str) -> bool: ...

    def iter_keys(self, foreign: list[str] | None = None) -> Iterator[str]:
        """Every key in the store, for reconciliation with the index.

        Only names the store accepts as keys (that :meth:`open` and :meth:`delete` take): a
        name in the store's space that is not one (a file the operating system or a person
        put in the object directory: ``lost+found/#1234``, ``.DS_Store``) is never an
        archive's object, and is appended to ``foreign`` instead, when given.
        """
        ...

    def check(self) -> None:
        """Raise :class:`~mimic_server.errors.OutOfResources` when the store cannot take bytes.

        The readiness probe's question, so it must be cheap and bounded in time: no object is
        written or read.
        """
        ...
