"""Stored objects read back with their SHA-256 checked before any byte leaves the archive.

A missing object, an unreadable store or bytes that no longer hash to the SHA-256 in the
index give ``None`` (logged without UIDs); the caller answers its protocol's failure
(a failed C-STORE sub-operation, an HTTP error part). Objects are immutable in the store
(each C-STORE writes a new key), so bytes checked once stay those that are sent.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from mimic_server.errors import OutOfResources
from mimic_server.query.finder import InstanceRef
from mimic_server.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VerifiedObject:
    """One stored Part 10 object whose bytes hashed to the SHA-256 in the index."""

    ref: InstanceRef
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def dataset_offset(self) -> int:
        """Where the data set starts: our Part 10 files begin with (0002,0000) File Meta
        Information Group Length, so the offset is 132 + 12 + that length."""
        return 144 + int.from_bytes(self.data[140:144], "little")

    def read(self) -> bytes:
        """The whole Part 10 file."""
        return self.data

    def chunks(self, start: int = 0) -> Iterator[bytes | memoryview]:
        """The Part 10 bytes from ``start`` on, in pieces (for a streaming answer)."""
        yield memoryview(self.data)[start:]


def open_verified(store: ObjectStore, ref: InstanceRef) -> VerifiedObject | None:
    """The stored object with its hash checked, or None (logged) if missing or corrupted."""
    try:
        with store.open(ref.object_key) as fh:
            data = fh.read()
    except (KeyError, OutOfResources) as exc:
        log.error(
            "stored object unreadable",
            extra={"object": reference(ref), "error": type(exc).__name__},
        )
        log.debug("unreadable object key", extra={"key": ref.object_key})
        return None
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        log.error("stored object fails its SHA-256 check", extra={"object": reference(ref)})
        log.debug("corrupted object key", extra={"key": ref.object_key})
        return None
    return VerifiedObject(ref, data)


def reference(ref: InstanceRef) -> str:
    """How an object is named in the log: its expected hash, never its UIDs (patient data)."""
    return f"sha256:{ref.sha256[:16]}"
