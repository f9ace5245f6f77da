"""Stored objects read back with their SHA-256 checked before any byte leaves the archive.

A missing object, an unreadable store or bytes that no longer hash to the SHA-256 in the
index give ``None`` (logged without UIDs); the caller answers its protocol's failure
(a failed C-STORE sub-operation, an HTTP error part). Objects are immutable in the store
(each C-STORE writes a new key); bytes changed under us all the same (a disk, a blob
changed by hand) are caught too: a small object is sent from the bytes that were checked,
a large one is hashed again as it is read to be sent (:meth:`VerifiedObject.chunks`).

An instance sent again gets a new key, and its old object is deleted once the new row has
committed. A retrieve that read its match list before that finds the old key gone: given
the index's ``current`` row of the instance, it sends the version stored now, if that is
still in the series (and study) that matched, instead of failing the sub-operation with an
error that reads like a lost object. (A large object sent again between its hash pass and
its sending is still lost mid-send: its sub-association is aborted, ``dimse/stream_send``.)

Memory stays bounded for any object size: an object of up to :data:`STREAM_ABOVE` bytes is
read whole and kept; a larger one is hashed by one streaming pass over the store and kept
as a handle, and :meth:`VerifiedObject.chunks` reads it again from the store piece by piece
when it is sent. The price of a large object is a second read of the store, not its size in
memory.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from mimic_server.errors import OutOfResources
from mimic_server.query.finder import InstanceRef
from mimic_server.storage import ObjectStore
from mimic_server.storage.keys import series_of_key

log = logging.getLogger(__name__)

MiB = 1 << 20
#: Objects larger than this are streamed from the store, never held whole (as on receive:
#: ``dimse/receiving.py`` spools data sets of more than 8 MiB).
STREAM_ABOVE = 8 * MiB
#: The pieces a large object is read in, for its hash and by :meth:`VerifiedObject.chunks`.
CHUNK = 1 * MiB

#: The index's current row of a matched instance (``Finder.current``), None once it is gone.
CurrentRow = Callable[[InstanceRef], "InstanceRef | None"]


class ObjectChanged(OutOfResources):
    """A large object read again (:meth:`VerifiedObject.chunks`) whose bytes no longer match
    the size and SHA-256 they were checked against: damaged, or replaced under the read.

    An ``OutOfResources`` as before for the DIMSE callers (the sub-operation fails either
    way); its own class so that a caller answering one object can tell it from a store that
    cannot be read now (Blob Storage throttled or down, which may answer again: WADO-RS 503)
    and keep it the failure of a corrupted object (WADO-RS 500)."""


class VerifiedObject:
    """One stored Part 10 object whose bytes hashed to the SHA-256 in the index.

    A small object carries its bytes; a large one (:attr:`streamed`) carries the store it
    is read from again, piece by piece, by :meth:`chunks`.
    """

    __slots__ = ("_data", "_store", "dataset_offset", "ref", "size")

    def __init__(
        self,
        ref: InstanceRef,
        size: int,
        dataset_offset: int,
        data: bytes | None = None,
        store: ObjectStore | None = None,
    ) -> None:
        if (data is None) == (store is None):
            raise ValueError("a verified object has either its bytes or its store")
        self.ref = ref
        #: The size of the whole Part 10 file, in bytes.
        self.size = size
        #: Where the data set starts: our Part 10 files begin with (0002,0000) File Meta
        #: Information Group Length, so the offset is 132 + 12 + that length.
        self.dataset_offset = dataset_offset
        self._data = data
        self._store = store

    @property
    def streamed(self) -> bool:
        """Larger than :data:`STREAM_ABOVE`: read from the store when sent, never held."""
        return self._data is None

    def read(self) -> bytes:
        """The whole Part 10 file. For a :attr:`streamed` object this reads it whole into
        memory again: only for what cannot work on pieces (a transfer syntax conversion);
        send with :meth:`chunks`."""
        if self._data is not None:
            return self._data
        return b"".join(self.chunks())

    def copied(self, directory: Path | None = None) -> BinaryIO:
        """The whole Part 10 file as a seekable file, for what reads it out of order (a
        header parse, a frame, a bulk data value), in bounded memory: a small object's
        bytes as they are (not copied); a streamed one written by :meth:`chunks` to an
        anonymous file in ``directory`` (so hashed again: a change raises
        ``OutOfResources``, and no file is handed out). The caller closes it."""
        if self._data is not None:
            return io.BytesIO(self._data)
        copy = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - the caller's
        try:
            for piece in self.chunks():
                copy.write(piece)
            copy.seek(0)
        except BaseException:
            copy.close()
            raise
        return copy

    def chunks(self, start: int = 0, size: int = CHUNK) -> Iterator[bytes | memoryview]:
        """The Part 10 bytes from ``start`` on, in pieces (for a streaming answer).

        A streamed object is read from the store while the pieces are taken, each piece
        ``size`` bytes but the last; the store's handle is closed when the iterator ends or
        is closed (``close()``, or garbage collection of an abandoned iterator). A store
        that fails midway raises ``KeyError`` / ``OutOfResources`` / ``OSError`` from the
        iteration: the receiver has part of the object, and the caller must end the answer
        as failed (an A-ABORT, a broken HTTP body); one that fails before the caller sent
        anything of it may be answered as a store that cannot be read now.

        Its hash was checked by an earlier pass, and bytes read again can differ (a disk
        or a blob changed or cut under us, in the minutes a large object takes to send): so
        every byte read is hashed and counted again, the bytes before ``start`` included,
        and the last piece is given only once the whole object matches its SHA-256 and
        size; else :class:`ObjectChanged` is raised in its place, and the receiver never holds
        a complete object that is not the one stored.
        """
        if self._data is not None:
            yield memoryview(self._data)[start:]
            return
        assert self._store is not None
        digest = hashlib.sha256()
        read = 0
        with self._store.open(self.ref.object_key) as fh:
            while read < start and (piece := fh.read(min(size, start - read))):
                digest.update(piece)
                read += len(piece)
            held: bytes | None = None
            while piece := fh.read(size):
                digest.update(piece)
                read += len(piece)
                if held is not None:
                    yield held
                held = piece
        if read != self.size or digest.hexdigest() != self.ref.sha256:
            log.error("stored object changed while it was being read",
                      extra={"object": reference(self.ref), "size": read, "expected": self.size})
            log.debug("changed object key", extra={"key": self.ref.object_key})
            raise ObjectChanged("the stored object changed while it was being read")
        if held is not None:
            yield held


def open_verified(
    store: ObjectStore,
    ref: InstanceRef,
    stream_above: int = STREAM_ABOVE,
    current: CurrentRow | None = None,
    *,
    unavailable_raises: bool = False,
) -> VerifiedObject | None:
    """The stored object with its hash checked, or None (logged) if missing or corrupted.

    ``unavailable_raises``: a store that cannot be read (``OutOfResources``: Blob Storage
    throttling, down or refusing) raises, logged, instead of None, for a caller that answers
    one object and must tell a store that may answer again from an object that is lost or
    corrupt (WADO-RS: 503, not 500).

    Up to ``stream_above`` bytes the object is read whole and kept; beyond, the hash is
    computed by one streaming pass and the object is read again when sent. An object missing
    from the store is looked up again with ``current``, if given (:func:`_stored_again`).
    """
    try:
        with store.open(ref.object_key) as fh:
            head = _head(fh, stream_above + 1)
            digest = hashlib.sha256(head)
            size = len(head)
            large = size > stream_above
            if large:
                while piece := fh.read(CHUNK):
                    digest.update(piece)
                    size += len(piece)
    except KeyError:
        if current is not None:
            return _stored_again(store, ref, stream_above, current, unavailable_raises)
        _unreadable(ref, "KeyError")
        return None
    except (OutOfResources, OSError) as exc:
        _unreadable(ref, type(exc).__name__)
        if unavailable_raises and isinstance(exc, OutOfResources):
            raise
        return None
    if digest.hexdigest() != ref.sha256:
        log.error("stored object fails its SHA-256 check", extra={"object": reference(ref)})
        log.debug("corrupted object key", extra={"key": ref.object_key})
        return None
    offset = 144 + int.from_bytes(head[140:144], "little")
    if large:
        return VerifiedObject(ref, size, offset, store=store)
    return VerifiedObject(ref, size, offset, data=head)


def _stored_again(
    store: ObjectStore, ref: InstanceRef, stream_above: int, current: CurrentRow,
    unavailable_raises: bool = False,
) -> VerifiedObject | None:
    """A matched instance whose object is gone: sent again since it matched (a new key; the
    old object was deleted once the new row committed), deleted or moved to another series
    since (no longer what matched: failed), or truly missing."""
    try:
        now = current(ref)
    except OutOfResources:
        now = ref  # the index cannot say: the object stays unreadable
    if now is None:
        log.warning("instance deleted since it matched", extra={"object": reference(ref)})
        return None
    if now.object_key == ref.object_key:
        _unreadable(ref, "KeyError")
        return None
    if series_of_key(now.object_key) != series_of_key(ref.object_key):
        # Sent again into another series or study (a correction): no longer what matched.
        log.warning("instance moved to another series since it matched",
                    extra={"object": reference(ref), "current": reference(now)})
        return None
    log.info(
        "instance stored again since it matched: its current version is sent",
        extra={"object": reference(ref), "current": reference(now)},
    )
    # Once: no current for a second change.
    return open_verified(store, now, stream_above, unavailable_raises=unavailable_raises)


def _unreadable(ref: InstanceRef, error: str) -> None:
    log.error("stored object unreadable", extra={"object": reference(ref), "error": error})
    log.debug("unreadable object key", extra={"key": ref.object_key})


def _head(fh: BinaryIO, limit: int) -> bytes:
    """The first ``limit`` bytes (all, if fewer), read as the file's own size when the
    stream is a file: ``read(limit)`` allocates ``limit`` bytes first, and 8 MiB for a 40 KB
    object cost more CPU than its SHA-256 (docs/benchmarks.md, DICOMweb)."""
    try:
        known = os.fstat(fh.fileno()).st_size
    except (AttributeError, OSError, ValueError):  # not a file (a blob's stream)
        return fh.read(limit)
    if known + 1 >= limit:
        return fh.read(limit)
    head = fh.read(known + 1)
    if len(head) > known:  # longer than it was a moment ago (stored objects never change)
        head += fh.read(limit - len(head))
    return head


def reference(ref: InstanceRef) -> str:
    """How an object is named in the log: its expected hash, never its UIDs (patient data)."""
    return f"sha256:{ref.sha256[:16]}"
