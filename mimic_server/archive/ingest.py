"""Ingest one received object: the keep path that C-STORE and STOW-RS both take.

A front door (``dimse/store.py``, ``web/dicomweb/stow.py``) receives a data set its own way
and hands it here as a :class:`ReceivedObject`: a File Meta header *we* wrote, followed by
the data set bytes exactly as they arrived (never decoded nor re-encoded), its structure
walked to its exact end (``codec/structure.py``: a damaged data set is refused before
anything is stored), its header parsed (stopping before Pixel Data) and the SHA-256 of the
whole. :func:`ingest` then checks the object against what its sender declared (the C-STORE
command's UIDs, the STOW part's File Meta) and keeps it, in the archive's first invariant's
order: the object is put in the store, then indexed in one transaction (with its audit
record where the trail is the index's table), and only then may the front door answer
success. If indexing fails the new object is deleted, so no index row ever points at a
missing object; a replaced object (the same SOP Instance again: the newest bytes win) is
deleted after the commit.

Failures raise :class:`~mimic_server.errors.DicomStatusError` carrying a DIMSE status
(``0xA700``, ``0xA900``, ``0xC000``, ``0xC001``, ``0xC002``, ``0xC003``); each front door
turns it into its protocol's answer (a C-STORE status, a PS3.18 Failure Reason).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from pydicom.uid import UID

from mimic_server.archive.helper_threads import HelperThreads
from mimic_server.codec.header import Header, read_checked_header, read_header
from mimic_server.errors import CannotUnderstand, DataSetMismatch, Status
from mimic_server.index.attributes import InstanceAttributes, valid_uid
from mimic_server.index.engine import commit_outcome_unknown
from mimic_server.storage.keys import new_object_key

if TYPE_CHECKING:
    from pathlib import Path

    from mimic_server.index import Index
    from mimic_server.security.audit import Prepared
    from mimic_server.storage import ObjectStore

log = logging.getLogger(__name__)

#: A data set received whole from this size on is hashed beside its put (:func:`keep`): on
#: one association the hash (0.27 ms for 0.5 MB with the CPU's SHA extensions) then runs
#: while the put waits for its fsyncs instead of before it; below, a thread hand-off would
#: cost about what the hash does.
HASH_BESIDE_PUT = 256 * 1024


def _sha256(file_meta: bytes, dataset: memoryview) -> str:
    digest = hashlib.sha256(file_meta)
    digest.update(dataset)  # hashlib lets go of the GIL for the bulk of it
    return digest.hexdigest()


class Spool(Protocol):
    """Where a large data set was written as it arrived; read back piece by piece. (A spool
    whose data set was not hashed as it arrived also has ``sha256(file_meta) -> str``, read
    from the file: :meth:`ReceivedObject.digest`.)"""

    def chunks(self) -> Iterator[bytes]: ...

    def whole_file(self) -> int | None:
        """A descriptor (the caller's to close) of an anonymous file holding exactly the
        object as kept (the File Meta we write, then the data set), which a store may name;
        else None."""
        ...


@dataclass(frozen=True, slots=True)
class SpooledChunks:
    """A spooled object's bytes for :meth:`ObjectStore.put`: read back (the File Meta, then
    the spool), or the spool file itself, named by a store on its file system
    (``storage/anonymous.py``) instead of copied."""

    file_meta: bytes
    spool: Spool

    def __iter__(self) -> Iterator[bytes]:
        yield self.file_meta
        yield from self.spool.chunks()

    def whole_file(self) -> int | None:
        return self.spool.whole_file()


@dataclass(frozen=True, slots=True)
class ReceivedObject:
    """A received object ready to be stored: ``chunks`` are its Part 10 bytes."""

    file_meta: bytes
    dataset: memoryview
    transfer_syntax_uid: str
    #: Up to Pixel Data: scanned, or read by pydicom (``codec/header.py``).
    header: Header
    #: Hex SHA-256 of the whole; None for a large data set received whole, whose hash
    #: :func:`keep` takes beside the put, where the store lets it (:meth:`digest`).
    sha256: str | None
    #: The spool a large data set arrived in (its bytes are read back from there).
    spool: Spool | None = None

    @property
    def size(self) -> int:
        return len(self.file_meta) + self.dataset.nbytes

    @property
    def chunks(self) -> Iterable[bytes | memoryview]:
        if self.spool is not None:
            return SpooledChunks(self.file_meta, self.spool)
        return (self.file_meta, self.dataset)

    @classmethod
    def of(cls, file_meta: bytes, dataset: memoryview, transfer_syntax: str,
           spool: Spool | None = None) -> ReceivedObject:
        """Walk, parse and hash a data set received whole (in memory, or mapped from a spool
        file: the walk reads element headers only, the parse stops before Pixel Data).

        Raises ``CannotUnderstand`` (``0xC000``) when its elements do not parse to its end.
        A data set of ``HASH_BESIDE_PUT`` bytes or more is hashed later, by :func:`keep`.
        """
        syntax = UID(transfer_syntax)
        header = read_checked_header(dataset, syntax)
        sha256 = _sha256(file_meta, dataset) if dataset.nbytes < HASH_BESIDE_PUT else None
        return cls(file_meta, dataset, str(syntax), header, sha256, spool)

    def digest(self) -> str:
        """:attr:`sha256`, taken now if it was left for later: read from the spool where it
        can read itself (``sha256(file_meta)``: a STOW-RS part's), not through the map the
        header was parsed from, whose every page would otherwise stay in the process's RSS
        until the map is closed (4 GB with four 1 GiB parts at once)."""
        if self.sha256 is not None:
            return self.sha256
        read_digest = getattr(self.spool, "sha256", None)
        if read_digest is not None:
            return cast(str, read_digest(self.file_meta))
        return _sha256(self.file_meta, self.dataset)

    @classmethod
    def walked(cls, file_meta: bytes, dataset: memoryview, transfer_syntax: str,
               sha256: str, spool: Spool) -> ReceivedObject:
        """A data set that was hashed and walked while it arrived: only its header is
        parsed (through a map of its spool file, so only the header's pages are read)."""
        syntax = UID(transfer_syntax)
        return cls(file_meta, dataset, str(syntax), read_header(dataset, syntax), sha256,
                   spool)


#: Builds the audit record of one instance, to be written in its index transaction
#: (None where the trail records otherwise); called once the attributes are known.
AuditRecord = Callable[[InstanceAttributes], "Prepared | None"]


def check_declared_uids(sop_class_uid: str, sop_instance_uid: str) -> None:
    """The UIDs a sender declares (a C-STORE command, a Part 10 File Meta) must be valid
    UIDs before anything else is looked at (``0xC002``)."""
    if not (valid_uid(sop_instance_uid) and valid_uid(sop_class_uid)):
        raise CannotUnderstand("invalid Affected SOP UID", Status.MISSING_ATTRIBUTE)


def ingest(
    store: ObjectStore,
    index: Index,
    received: ReceivedObject,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    received_from: str,
    audit_record: AuditRecord | None = None,
    expected: Callable[[InstanceAttributes], None] | None = None,
) -> InstanceAttributes:
    """Check ``received`` against what its sender declared and keep it; its attributes
    once it is durable (stored and indexed, committed).

    ``expected`` may refuse the object on its attributes before anything is stored (STOW-RS
    to ``/studies/{study}`` refuses another study's instance); it raises a
    ``DicomStatusError``. Raises ``DicomStatusError``: ``0xC001`` SOP Instance UID differs
    from the declared one, ``0xA900`` SOP Class UID differs, ``0xC002`` an attribute the
    index needs missing or invalid, ``0xC003`` its study or series filed under another
    patient or study, ``0xA700`` store or index unavailable.
    """
    attrs = InstanceAttributes.from_header(received.header)
    if attrs.sop_instance_uid != sop_instance_uid:
        raise CannotUnderstand("SOP Instance UID differs from the request", Status.UID_MISMATCH)
    if attrs.sop_class_uid != sop_class_uid:
        raise DataSetMismatch("SOP Class UID differs from the request")
    if expected is not None:
        expected(attrs)
    record = audit_record(attrs) if audit_record is not None else None
    keep(store, index, received, attrs, received_from, record)
    return attrs


@dataclass(frozen=True, slots=True)
class Ingest:
    """The ingest path bound to the archive's store and index, with the limits every front
    door receives under: what the composition root hands a front door (STOW-RS)."""

    store: ObjectStore
    index: Index
    #: ``MIMIC_MAX_OBJECT_BYTES``: the largest object kept.
    max_object_bytes: int
    #: Where objects too large to hold in memory are spooled while they arrive.
    spool_dir: Path

    def __call__(self, received: ReceivedObject, *, sop_class_uid: str,
                 sop_instance_uid: str, received_from: str,
                 audit_record: AuditRecord | None = None,
                 expected: Callable[[InstanceAttributes], None] | None = None,
                 ) -> InstanceAttributes:
        """:func:`ingest` into this archive."""
        return ingest(self.store, self.index, received, sop_class_uid=sop_class_uid,
                      sop_instance_uid=sop_instance_uid, received_from=received_from,
                      audit_record=audit_record, expected=expected)


def keep(
    store: ObjectStore,
    index: Index,
    received: ReceivedObject,
    attrs: InstanceAttributes,
    received_from: str,
    record: Prepared | None = None,
) -> None:
    """Put, then index (with ``record`` in the same transaction); delete on failure.

    Where the index says its transaction has round trips to make meanwhile
    (``overlaps_put``: PostgreSQL, whose transactions run side by side, unless the instance
    is one statement sent after the put), the put runs on a helper thread while the index
    transaction does its round trips, and the transaction waits for the put to be durable
    before it writes the audit row and commits: the index row still commits only after the
    object is in the store, and a failed put rolls the row back (invariant 1), but one
    association no longer waits for the fsyncs and the database one after the other. A new
    patient, study or series row is inserted only once the put is done
    (``before_new_rows``): held uncommitted through a slow put, it made every other sender
    of that study wait, and refused them 0xA700 at the lock deadline.

    A large data set received whole comes unhashed (``ReceivedObject.of``); where the store
    does not keep the SHA-256 with the object, it is taken beside the put (on a helper, or
    in this thread while the put is on one), since only the index row needs it.
    """
    key = new_object_key(
        attrs.study_instance_uid, attrs.series_instance_uid, attrs.sop_instance_uid
    )
    sha256 = received.sha256
    if sha256 is None and store.records_sha256:
        sha256 = received.digest()  # kept with the object: wanted before the put
    stored: Future[int] | None = None
    overlaps_put = getattr(index, "overlaps_put", None)
    if overlaps_put is not None and overlaps_put(attrs):
        stored = _helpers().submit(store.put, key, received.chunks, sha256)
        put_done = stored.result

        def durable_first(conn: object) -> None:
            put_done()  # raises the put's error: the transaction rolls back
            if record is not None:
                record.write_in(conn)

        in_transaction: Callable[[Any], None] | None = durable_first
        # Nor may new patient, study or series rows wait uncommitted for the put: every
        # other writer of that new study would wait on them, and be refused at the lock
        # deadline (a large object's upload takes longer).
        # (Through ``put_done``'s cell, as ``durable_first``: the frames of a failure's
        # traceback hold this function, and ``finally`` below lets go of the future.)
        def durable() -> None:
            put_done()

        before_new_rows: dict[str, Any] = {"before_new_rows": durable}
    else:
        before_new_rows = {}
        if sha256 is None:
            sha256 = _put_beside_digest(store, key, received)
        else:
            store.put(key, received.chunks, sha256)
        in_transaction = record.write_in if record is not None else None
    try:
        if sha256 is None:
            sha256 = received.digest()  # while the put runs on its helper
        replaced = index.upsert_instance(
            attrs,
            transfer_syntax_uid=received.transfer_syntax_uid,
            object_key=key,
            sha256=sha256,
            size=received.size,
            received_from=received_from,
            in_transaction=in_transaction,
            **before_new_rows,
        )
        if stored is not None:
            stored.result()  # done: the transaction waited for it before its commit
    except BaseException as exc:
        if stored is not None:
            futures.wait([stored])  # a put still writing would leave its object behind
        if commit_outcome_unknown(exc):
            # The row may have committed: deleting the object could leave a row without it.
            log.error("the index commit's outcome is unknown; the object is kept for reconcile")
        else:
            _delete_quietly(store, key)
        raise
    finally:
        # The failure's traceback holds this frame: not the put's future too (which holds
        # the failure), or that cycle keeps ``received`` until a collection.
        stored = put_done = in_transaction = durable_first = durable = None
        before_new_rows = {}
    if record is not None:
        record.committed()  # the other sinks (syslog) get it once it is in the table
    if replaced is not None and replaced != key:
        _delete_quietly(store, replaced)  # the same instance again: the newest bytes win


def _put_beside_digest(store: ObjectStore, key: str, received: ReceivedObject) -> str:
    """Put in this thread while a helper hashes; the digest once both are done."""
    hashing = _helpers().submit(received.digest)
    try:
        store.put(key, received.chunks, None)
    finally:
        futures.wait([hashing])  # it reads the data set's buffer: done before that may go
    return hashing.result()


_pool: tuple[int, HelperThreads] | None = None
_pool_lock = threading.Lock()


def _helpers() -> HelperThreads:
    """The helper threads of this process (``archive/helper_threads.py``); new ones in a
    forked child, whose copy of the parent's threads is dead."""
    global _pool
    pool = _pool
    if pool is None or pool[0] != os.getpid():
        with _pool_lock:
            if _pool is None or _pool[0] != os.getpid():
                _pool = (os.getpid(), HelperThreads("mimic-keep"))
            pool = _pool
    return pool[1]


def _delete_quietly(store: ObjectStore, key: str) -> None:
    try:
        store.delete(key)
    except Exception:
        # An orphan object, never an index row without object: 'mimic reconcile' removes it.
        # The key holds UIDs: named at DEBUG only; 'mimic reconcile' finds the orphan anyway.
        log.error("object could not be deleted; left for reconcile")
        log.debug("undeleted object key", extra={"key": key})
