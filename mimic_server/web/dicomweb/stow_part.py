"""One part of a STOW-RS body as it arrives: a Part 10 file, kept in bounded memory.

The part's File Meta is read from its first bytes (what it declares: SOP Class and Instance
UIDs, transfer syntax); a syntax the archive does not keep is refused there and the rest of
the part is read and dropped. The bytes stay in memory while the part is small (the common
case) and past ``IN_MEMORY`` move to an anonymous spool file (no name: nothing leaks on disk,
the kernel frees it should the process die), as a large C-STORE's do. The parts of all
requests together hold at most their :class:`PartMemory` (``MIMIC_WEB_STOW_MEMORY_BYTES``
per process): past it, a part goes to its spool file from its data set's first byte, so
that requests stalled with 8 MiB each cannot hold the process's memory between them. The
spool holds the object as the archive keeps it: the File Meta the archive writes (made from
the sender's, as ``archive/part10.py`` makes it), then the data set as received, so that a
file store on its file system names the spool instead of copying it
(``storage/anonymous.py``). A data set larger than ``MIMIC_MAX_OBJECT_BYTES`` is dropped as
soon as it is, and refused (``0xA700``, as C-STORE). Once the part has ended,
:meth:`ReceivedPart.received` hands the archive the data set bytes as received, from memory
or a read-only map of the spool file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mimic_server.archive.ingest import ReceivedObject, check_declared_uids
from mimic_server.archive.part10 import received_part10
from mimic_server.archive.syntaxes import accepted
from mimic_server.codec.file_meta import FileMetaRead, FileMetaReader, encode_file_meta
from mimic_server.errors import (
    CannotUnderstand,
    DicomStatusError,
    OutOfResources,
    Status,
    TooLarge,
)
from mimic_server.storage.anonymous import open_anonymous
from mimic_server.web.dicomweb.multipart import boundary_of

log = logging.getLogger(__name__)

MiB = 1 << 20
#: Parts up to this size stay in memory.
IN_MEMORY = 8 * MiB
#: The size of the pieces a spooled part is read back in.
READ_CHUNK = MiB
#: The media type of every part (PS3.18 10.5.1.2: Part 10 instances).
PART_TYPE = "application/dicom"


class PartMemory:
    """The bytes that the parts of every STOW-RS request of the process hold in memory
    together, and their limit (thread-safe: a part writes on the event loop and may be
    closed in a worker thread)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def take(self, count: int, *, always: bool = False) -> bool:
        """Whether ``count`` more bytes may be held; ``always``: held even past the limit
        (a File Meta is read in memory, and is at most ``MAX_FILE_META`` and one chunk)."""
        with self._lock:
            if not always and self._held + count > self.limit:
                return False
            self._held += count
            return True

    def give(self, count: int) -> None:
        with self._lock:
            self._held -= count


class ReceivedPart:
    """One part's bytes and what its File Meta declares (a ``multipart.PartSink``)."""

    def __init__(self, headers: dict[str, str], max_object_bytes: int, spool_dir: Path,
                 in_memory: int = IN_MEMORY, memory: PartMemory | None = None) -> None:
        self._max = max_object_bytes
        self._spool_dir = spool_dir
        self._in_memory = in_memory
        #: The process's budget (None: this part's own, ``in_memory`` alone bounds it),
        #: and how much of it this part holds (its head's bytes).
        self._memory = memory if memory is not None else PartMemory(in_memory)
        self._held = 0
        self._head = bytearray()
        self._file_meta = FileMetaReader()
        self._spool: IO[bytes] | None = None
        #: Whether the spool can be given a name (``open_anonymous``), and where its data
        #: set starts (after the archive's File Meta).
        self._nameable = False
        self._dataset_start = 0
        self._map: mmap.mmap | None = None
        #: The object :meth:`received` gave, read through the map (released at close).
        self._received: ReceivedObject | None = None
        #: Every byte of the part received, kept or not.
        self.size = 0
        self.declared: FileMetaRead | None = None
        #: Why the part is refused, once known (the rest of it is then dropped).
        self.failure: DicomStatusError | None = None
        self.ended = False
        media, _params = boundary_of(headers.get("content-type", PART_TYPE))
        if media != PART_TYPE:
            self._fail(CannotUnderstand(f"a part of type {media[:40]} is not {PART_TYPE}"))

    def write(self, data: memoryview) -> None:
        self.size += len(data)
        if self.failure is not None:
            return
        try:
            if self.declared is None:
                self._hold(len(data), always=True)
                self._head += data
                self.declared = self._file_meta.read(self._head)
                if self.declared is not None:
                    self._check_declared(self.declared)
                    if self._memory.held > self._memory.limit:
                        self._spooled()  # the budget is spent: the data set goes to disk
            elif (self._spool is None and len(self._head) + len(data) <= self._in_memory
                    and self._hold(len(data))):
                self._head += data
            else:
                self._spooled().write(data)
            if self.declared is not None and self.size - self.declared.dataset_offset > self._max:
                self._fail(TooLarge(
                    f"data set exceeds the archive's limit of {self._max} bytes"))
        except DicomStatusError as exc:
            self._fail(exc)
        except OSError as exc:
            log.error("a STOW-RS part cannot be spooled", extra={"error": type(exc).__name__})
            self._fail(OutOfResources("the part cannot be spooled"))

    def end(self) -> None:
        self.ended = True
        if self.failure is None and self.declared is None:
            try:  # a part shorter than its File Meta's last element plus 8 bytes
                self.declared = self._file_meta.read(self._head, whole=True)
                if self.declared is not None:
                    self._check_declared(self.declared)
            except DicomStatusError as exc:
                self._fail(exc)
        if self.failure is None and self.declared is None:
            self._fail(CannotUnderstand("the part is not a DICOM Part 10 file"))

    def _check_declared(self, declared: FileMetaRead) -> None:
        """Refused as early as the File Meta says so: the rest is not kept. (The same
        checks, in the same order, as ``received_part10``'s first two.)"""
        if not accepted(declared.transfer_syntax_uid):
            raise CannotUnderstand("transfer syntax not supported",
                                   Status.TRANSFER_SYNTAX_NOT_SUPPORTED)
        check_declared_uids(declared.sop_class_uid, declared.sop_instance_uid)

    def _spooled(self) -> IO[bytes]:
        """The spool, opened at the first byte past ``IN_MEMORY``: the archive's File Meta,
        then the data set received so far (the sender's File Meta is not kept)."""
        if self._spool is None:
            declared = self.declared
            assert declared is not None  # the File Meta is read before anything is spooled
            self._spool_dir.mkdir(parents=True, exist_ok=True)
            self._spool, self._nameable = open_anonymous(self._spool_dir)
            file_meta = encode_file_meta(declared.sop_class_uid, declared.sop_instance_uid,
                                         declared.transfer_syntax_uid, "")
            self._spool.write(file_meta)
            self._dataset_start = len(file_meta)
            with memoryview(self._head) as head:
                self._spool.write(head[declared.dataset_offset:])
            self._head = bytearray()
            self._release()
        return self._spool

    def _hold(self, count: int, *, always: bool = False) -> bool:
        """Whether the head may grow by ``count`` bytes under the process's budget."""
        if not self._memory.take(count, always=always):
            return False
        self._held += count
        return True

    def _release(self) -> None:
        """The head is dropped (spooled or closed): its bytes go back to the budget."""
        held, self._held = self._held, 0
        if held:
            self._memory.give(held)

    def _fail(self, exc: DicomStatusError) -> None:
        self.failure = exc
        self.close()

    def received(self) -> ReceivedObject:
        """The ended part as the archive keeps it; ``DicomStatusError`` if refused."""
        assert self.ended
        if self.failure is not None:
            raise self.failure
        declared = self.declared
        assert declared is not None
        if self._spool is None:
            return received_part10(memoryview(self._head), declared)
        try:  # its last bytes may still be in the write buffer: the disk can be full now
            self._spool.flush()
        except OSError as exc:
            log.error("a STOW-RS part cannot be spooled", extra={"error": type(exc).__name__})
            self._fail(OutOfResources("the part cannot be spooled"))
            raise OutOfResources("the part cannot be spooled") from None
        self._map = mmap.mmap(self._spool.fileno(), 0, access=mmap.ACCESS_READ)
        with memoryview(self._map) as whole:
            # The spool's File Meta is the one received_part10 makes again from `declared`.
            ours = dataclasses.replace(declared, dataset_offset=self._dataset_start)
            self._received = received_part10(whole, ours, spool=self)
        return self._received

    def chunks(self) -> Iterator[bytes]:
        """The spooled data set (after the archive's File Meta), read back piece by piece."""
        assert self._spool is not None
        self._spool.seek(self._dataset_start)
        while chunk := self._spool.read(READ_CHUNK):
            yield chunk

    def sha256(self, file_meta: bytes) -> str:
        """SHA-256 of ``file_meta`` and the spooled data set, read by ``preadv`` into one
        buffer: beside a put that reads :meth:`chunks` (no shared file position), and
        without mapping the object's pages into the process (``ReceivedObject.digest``)."""
        assert self._spool is not None
        digest = hashlib.sha256(file_meta)
        fd, offset = self._spool.fileno(), self._dataset_start
        with memoryview(bytearray(READ_CHUNK)) as buffer:
            while count := os.preadv(fd, [buffer], offset):
                with buffer[:count] as piece:
                    digest.update(piece)  # hashlib lets go of the GIL for the bulk of it
                offset += count
        return digest.hexdigest()

    def whole_file(self) -> int | None:
        """A descriptor of the spool file of its own (the caller closes it), where the file
        store may name it: it holds exactly the object as kept (the archive's File Meta,
        then the whole data set, the part ended and not refused) and can be named; else
        None."""
        spool, declared = self._spool, self.declared
        if (not (self._nameable and self.ended) or spool is None or spool.closed
                or declared is None or self.failure is not None or self._received is None):
            return None
        spool.flush()
        fd = spool.fileno()
        if os.fstat(fd).st_size != self._dataset_start + self.size - declared.dataset_offset:
            return None
        return os.dup(fd)

    def close(self) -> None:
        """Drop what is held (memory, map, spool file)."""
        self._head = bytearray()
        self._release()
        # Its part is kept or refused: nobody reads its object now. Released, so that the
        # map closes even where the object lives on; a view still exported from either
        # leaves them to the garbage collector.
        with contextlib.suppress(BufferError):
            if self._received is not None:
                self._received.dataset.release()
            if self._map is not None:
                self._map.close()
        self._received = self._map = None
        spool, self._spool = self._spool, None
        if spool is not None:
            # Closing flushes the write buffer, which fails again where the write that
            # brought us here failed (the disk full); the descriptor is closed all the same.
            with contextlib.suppress(OSError):
                spool.close()
