"""Verified copies of large objects, kept a few minutes for the WADO-RS requests that follow.

A frame, a rendering or a bulk data value of an object over 8 MiB (or of a Deflated one) is
read from a seekable copy of the object (``wado.copied``), and making that copy reads the
whole object from the store twice (the SHA-256 pass of ``open_verified``, then the copy,
hashed again as it is written) and writes it whole to the spool directory. A viewer asks
for the frames of a multi-frame object one request at a time, several at once: paging
through the 1,000 frames of a 500 MB tomosynthesis object cost a terabyte read and half of
one written. Here the copy one request made is kept, and the requests after it that name
the same stored object read their frames from it: the object is read, checked and copied
once per spell of use, and requests that arrive while it is being made wait for it instead
of each making their own.

Why this keeps invariant 2 (no byte leaves the archive unchecked): a copy is kept only once
it was written whole and every byte of it hashed to the SHA-256 in the index on the way
(a copy that failed is never kept); it is an anonymous file (``O_TMPFILE``: no name in any
directory, mode 0600) that only this process holds; and it is found again only under the
object key *and* SHA-256 that the index names now for the instance asked for (an instance
sent again has a new key, and its old copy is never asked for again).

Bounds, per process: at most ``limit`` bytes of copies kept (``MIMIC_WEB_KEPT_COPIES_BYTES``,
0: none kept), the least recently used dropped first, and an object larger than that never
kept (nor waited for: its requests copy it each for itself, at once, as before); each copy
dropped :data:`KEEP_SECONDS` after its last use, by a thread that sleeps until then (none
while nothing is kept). Each request reads through a descriptor of its own, opened anew on
the copy (``/proc/self/fd``: its own position, closed with the request), so a copy dropped
while a request reads it stays on disk until that request ends: the disk in use is the
bound plus the copies of requests in progress, as it was without kept copies. Where such a
descriptor cannot be opened (no ``/proc``), nothing is kept. A copy of an instance deleted
meanwhile stays until its time is up, never served: every request finds its object through
the index first.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import BinaryIO

from mimic_server.archive.read import reference
from mimic_server.query.finder import InstanceRef

log = logging.getLogger(__name__)

#: How long a copy is kept after its last use: a viewer pages through an object within it.
KEEP_SECONDS = 300.0
#: The objects found not to keep (too large, or small enough to be copied in memory) that are
#: remembered, so that their requests do not wait for one another (:meth:`KeptCopies.making`).
REMEMBERED_NOT_KEPT = 4096

_Key = tuple[str, str]  # (object key, SHA-256)


class _Copy:
    """One kept copy: the file ``copied`` made, its size and its last use."""

    __slots__ = ("file", "size", "used")

    def __init__(self, file: BinaryIO, size: int, used: float) -> None:
        self.file = file
        self.size = size
        self.used = used


class KeptCopies:
    """The copies of one process, by object key and SHA-256."""

    def __init__(self, limit: int, keep_seconds: float = KEEP_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.keep_seconds = keep_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._copies: OrderedDict[_Key, _Copy] = OrderedDict()  # least recently used first
        self._making: dict[_Key, threading.Event] = {}
        self._not_kept: OrderedDict[_Key, None] = OrderedDict()
        self._bytes = 0
        self._sweeper: threading.Thread | None = None
        self._closed = False
        #: Copies kept and requests answered from one, for the tests and the log.
        self.kept = 0
        self.reused = 0

    @property
    def kept_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def reader(self, ref: InstanceRef) -> BinaryIO | None:
        """A seekable view of the kept copy of ``ref``'s object (a descriptor of its own),
        or None; the caller closes it."""
        key = (ref.object_key, ref.sha256)
        with self._lock:  # held while the view opens: the copy is not closed meanwhile
            copy = self._copies.get(key)
            if copy is None:
                return None
            view = _view_of(copy.file)
            self._copies.move_to_end(key)
            copy.used = self._clock()
            self.reused += 1
        return view

    @contextlib.contextmanager
    def making(self, ref: InstanceRef) -> Iterator[bool]:
        """True for the request that makes the copy of ``ref``'s object; one that asks for
        it meanwhile waits until that one is done, then gets False: it reads the copy kept
        (:meth:`reader`), or, where none was kept (too large, in memory, failed), makes its
        own at once, beside the others. An object known not to be kept is not waited for."""
        key = (ref.object_key, ref.sha256)
        with self._lock:
            if key in self._not_kept:
                self._not_kept.move_to_end(key)
                maker, done = False, None
            elif (done := self._making.get(key)) is None:
                maker, done = True, self._making.setdefault(key, threading.Event())
            else:
                maker = False
        if not maker:
            if done is not None:
                done.wait()
            yield False
            return
        try:
            yield True
        finally:
            with self._lock:
                del self._making[key]
            done.set()

    def keep(self, ref: InstanceRef, copy: BinaryIO) -> BinaryIO:
        """Keep ``copy`` (a file that ``wado.copied`` made of ``ref``'s object, checked
        whole) and give the caller a view of it to read; one in memory (a small object), one
        larger than the limit, or any once closed, is given back as it is."""
        key = (ref.object_key, ref.sha256)
        try:
            fd = copy.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            with self._lock:  # in memory: nothing was written, nothing to keep
                self._remember_not_kept(key)
            return copy
        try:
            copy.flush()
            size = os.fstat(fd).st_size
        except BaseException:
            copy.close()
            raise
        closing: list[BinaryIO] = []
        with self._lock:
            if size > self.limit:
                self._remember_not_kept(key)
            if self._closed or size > self.limit:
                return copy
            if key in self._copies:  # made meanwhile by a request that did not wait for it
                return copy
            try:
                view = _view_of(copy)
            except OSError:  # no /proc: this copy serves its own request alone
                return copy
            while self._copies and self._bytes + size > self.limit:
                self._drop(next(iter(self._copies)), closing)
            self._copies[key] = _Copy(copy, size, self._clock())
            self._bytes += size
            self.kept += 1
            self._changed.notify()
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, name="kept-copies",
                                                 daemon=True)
                self._sweeper.start()
        _close_all(closing)
        log.debug("verified copy kept", extra={"object": reference(ref), "bytes": size})
        return view

    def close(self) -> None:
        """Drop every copy (at the process's shutdown); views still open keep reading
        theirs. The sweeper is waited for."""
        closing: list[BinaryIO] = []
        with self._lock:
            self._closed = True
            for key in list(self._copies):
                self._drop(key, closing)
            self._changed.notify()
            sweeper = self._sweeper
        _close_all(closing)
        if sweeper is not None and sweeper is not threading.current_thread():
            sweeper.join(5)

    def _remember_not_kept(self, key: _Key) -> None:
        self._not_kept[key] = None
        self._not_kept.move_to_end(key)
        while len(self._not_kept) > REMEMBERED_NOT_KEPT:
            self._not_kept.popitem(last=False)

    def _sweep(self) -> None:
        """Drop each copy unused for ``keep_seconds``; sleeps until the next is due, and
        without a timeout while nothing is kept. Files are closed outside the lock (closing
        a copy of 512 MiB takes tens of milliseconds)."""
        while True:
            closing: list[BinaryIO] = []
            with self._lock:
                if self._closed:
                    return
                now = self._clock()
                while self._copies:
                    key, oldest = next(iter(self._copies.items()))
                    if now - oldest.used < self.keep_seconds:
                        break
                    self._drop(key, closing)
                if not closing:
                    if self._copies:
                        oldest = next(iter(self._copies.values()))
                        self._changed.wait(oldest.used + self.keep_seconds - now)
                    else:
                        self._changed.wait()
            _close_all(closing)

    def _drop(self, key: _Key, closing: list[BinaryIO]) -> None:
        """Forget a copy (the lock held); its file goes to ``closing``, closed by the caller
        once the lock is given back (the views open on it keep the file's data)."""
        copy = self._copies.pop(key)
        self._bytes -= copy.size
        closing.append(copy.file)


def _close_all(files: list[BinaryIO]) -> None:
    for file in files:
        file.close()


def _view_of(file: BinaryIO) -> BinaryIO:
    """The anonymous file ``file`` opened once more, read-only: a descriptor of the request's
    own, at its own position, that keeps the file's data however long the copy is kept.

    An unbuffered ``FileIO``, as pydicom needs: it takes an ``io.BufferedReader`` for a file
    it opened by name and reads a deferred value again from ``name`` (a descriptor's number
    here), so every frame of an object with an Extended Offset Table over 1 KiB was a 500
    through such a view (review). Unbuffered, a header parse costs a read per element,
    microseconds against the copy it spares."""
    fd = os.open(f"/proc/self/fd/{file.fileno()}", os.O_RDONLY | os.O_CLOEXEC)
    return io.FileIO(fd, "rb")  # type: ignore[return-value]
