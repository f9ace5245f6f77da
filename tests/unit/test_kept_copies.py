"""WADO-RS frames, renderings and bulk data of a large object from a verified copy kept for
the requests after the first (``web/dicomweb/kept_copies.py``).

Each such request of an object over 8 MiB (or Deflated) read the object from the store twice
(its SHA-256 pass, then its copy) and wrote it whole to the spool directory: a viewer's
thousand frame requests of one object read it two thousand times. The store is counted here:
the first request reads it twice, the ones after it not at all, those at once wait for one
copy; a copy goes after its keep time or when the bound needs its room, its file closed once
no request reads it; one that failed its check is never kept; an instance sent again is read
from the store again."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from starlette.testclient import TestClient

from mimic_server.config import Settings
from mimic_server.query.finder import InstanceRef
from mimic_server.storage.keys import new_object_key
from mimic_server.storage.memory import MemoryStore
from mimic_server.web.dicomweb.app import build_dicomweb
from mimic_server.web.dicomweb.kept_copies import KeptCopies
from mimic_server.webapp import WebArchive
from tests.dicomweb_doubles import InstanceFinder, web_context
from tests.large_objects import large_image
from tests.support import wait_for

MiB = 1 << 20
STUDY, SERIES = "1.2.826.0.1.3680043.8.498.9", "1.2.826.0.1.3680043.8.498.9.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
OCTETS = 'multipart/related; type="application/octet-stream"'
FRAME = 512 * 512 * 2  # bytes of one frame of ``_object``
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


class _CountingStore(MemoryStore):
    """A memory store that counts the opens of each object; ``changed`` gives other bytes
    from the second open of a key on (a disk changed under the copy)."""

    def __init__(self) -> None:
        super().__init__()
        self.opens: dict[str, int] = {}
        self.changed: set[str] = set()
        self.slow = 0.0
        self.opening = self.most_at_once = 0

    def open(self, key: str) -> BinaryIO:
        with self._lock:
            self.opens[key] = self.opens.get(key, 0) + 1
            data = self.objects[key]
            if key in self.changed and self.opens[key] > 1:
                data = data[:-1] + bytes([data[-1] ^ 1])
            self.opening += 1
            self.most_at_once = max(self.most_at_once, self.opening)
        time.sleep(self.slow)
        with self._lock:
            self.opening -= 1
        return io.BytesIO(data)


class _Archive:
    def __init__(self, tmp_path: Path, copies: KeptCopies | None) -> None:
        self.store, self.finder = _CountingStore(), InstanceFinder()
        self.spool = tmp_path / "spool"
        self.copies = copies
        ctx = web_context(self.store, self.finder, self.spool, copies)
        self.client = TestClient(build_dicomweb(ctx))
        self.pixels: dict[str, bytes] = {}

    def add(self, uid: str, frames: int = 40, syntax: str = ExplicitVRLittleEndian) -> str:
        data, ds = _object(frames, syntax)
        self.pixels[uid] = ds.PixelData
        return self.put(uid, data, syntax)

    def put(self, uid: str, data: bytes, syntax: str) -> str:
        key = new_object_key(STUDY, SERIES, uid)
        self.store.objects[key] = data
        self.finder.refs[uid] = InstanceRef(SECONDARY_CAPTURE, uid, syntax, key,
                                            hashlib.sha256(data).hexdigest())
        return key

    def at_once(self, uid: str, numbers: list[int]) -> dict[int, bytes]:
        """The frames ``numbers`` asked for by as many requests at once."""
        answers: dict[int, bytes] = {}
        start = threading.Barrier(len(numbers))

        def ask(number: int) -> None:
            start.wait()
            answers[number] = self.frame(uid, number)

        threads = [threading.Thread(target=ask, args=(n,)) for n in numbers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        return answers

    def frame(self, uid: str, number: int) -> bytes:
        answer = self.client.get(f"/studies/{STUDY}/series/{SERIES}/instances/{uid}"
                                 f"/frames/{number}", headers={"Accept": OCTETS})
        assert answer.status_code == 200, answer.text
        boundary = answer.headers["content-type"].split("boundary=")[1].strip('"')
        closing = f"\r\n--{boundary}--\r\n".encode()
        head, _, rest = answer.content.partition(b"\r\n\r\n")
        assert head.startswith(f"--{boundary}\r\nContent-Type: ".encode())
        assert rest.endswith(closing)
        return rest[:-len(closing)]

    def expected(self, uid: str, number: int) -> bytes:
        return self.pixels[uid][(number - 1) * FRAME:number * FRAME]

    def opens(self, key: str) -> int:
        return self.store.opens.get(key, 0)

    def open_copies(self) -> int:
        """The anonymous files of the spool directory this process holds open."""
        return _held(self.spool)


def _object(frames: int, syntax: str) -> tuple[bytes, Any]:
    """20 MiB of 512 x 512 16-bit frames (40): streamed, not held (over 8 MiB)."""
    data, ds = large_image(512, 512, frames, syntax, study=STUDY, series=SERIES)
    return data, ds


@pytest.fixture
def archive(tmp_path: Path) -> Any:
    made = _Archive(tmp_path, KeptCopies(512 * MiB))
    yield made
    if made.copies is not None:
        made.copies.close()


def test_the_next_frames_of_a_large_object_are_read_from_its_kept_copy(archive: Any) -> None:
    key = archive.add("1.2.3.1")
    assert archive.frame("1.2.3.1", 1) == archive.expected("1.2.3.1", 1)
    assert archive.opens(key) == 2  # its SHA-256 pass, then the copy (hashed again)
    for number in (2, 40, 17):
        assert archive.frame("1.2.3.1", number) == archive.expected("1.2.3.1", number)
    rendered = archive.client.get(f"/studies/{STUDY}/series/{SERIES}/instances/1.2.3.1"
                                  "/frames/3/rendered", headers={"Accept": "image/png"})
    assert rendered.status_code == 200 and rendered.content.startswith(b"\x89PNG")
    bulk = archive.client.get(f"/studies/{STUDY}/series/{SERIES}/instances/1.2.3.1"
                              "/bulkdata/7FE00010", headers={"Accept": OCTETS})
    assert bulk.status_code == 200 and archive.pixels["1.2.3.1"] in bulk.content
    assert archive.opens(key) == 2  # none of them read the store again
    assert (archive.copies.kept, archive.copies.reused) == (1, 5)
    assert archive.open_copies() == 1  # the one copy, kept


def test_without_kept_copies_each_request_reads_the_store_twice(tmp_path: Path) -> None:
    """What it was before (``MIMIC_WEB_KEPT_COPIES_BYTES=0``), and what it is still."""
    archive = _Archive(tmp_path, None)
    key = archive.add("1.2.3.1")
    for number in (1, 2, 3):
        assert archive.frame("1.2.3.1", number) == archive.expected("1.2.3.1", number)
    assert archive.opens(key) == 6
    assert archive.open_copies() == 0


def test_requests_at_once_wait_for_one_copy(archive: Any) -> None:
    key = archive.add("1.2.3.1")
    archive.store.slow = 0.2  # each open of the store: time for the others to arrive
    answers = archive.at_once("1.2.3.1", list(range(1, 7)))
    assert {n: a == archive.expected("1.2.3.1", n) for n, a in answers.items()} == {
        n: True for n in range(1, 7)}
    assert archive.opens(key) == 2 and archive.store.most_at_once == 1
    assert (archive.copies.kept, archive.copies.reused) == (1, 5)


def test_requests_at_once_for_an_object_too_large_to_keep_do_not_queue(tmp_path: Path) -> None:
    """Each copies it for itself, beside the others, as before (review: they waited for one
    another in turn, 0.7 s became 3.9 s); the first ones wait only for the first copy, which
    finds the object too large, and those after that do not wait at all."""
    archive = _Archive(tmp_path, KeptCopies(MiB))
    try:
        key = archive.add("1.2.3.1")
        archive.store.slow = 0.3
        first = archive.at_once("1.2.3.1", [1, 2, 3, 4])
        assert archive.opens(key) == 8 and archive.store.most_at_once >= 2
        archive.store.most_at_once = 0
        after = archive.at_once("1.2.3.1", [5, 6, 7, 8])
        assert archive.opens(key) == 16 and archive.store.most_at_once >= 3
        answers = first | after
        assert all(answers[n] == archive.expected("1.2.3.1", n) for n in range(1, 9))
        assert archive.copies.kept == 0 and archive.open_copies() == 0
    finally:
        archive.copies.close()


def test_a_copy_goes_after_its_keep_time_and_its_file_is_closed(tmp_path: Path) -> None:
    archive = _Archive(tmp_path, KeptCopies(512 * MiB, keep_seconds=0.3))
    try:
        key = archive.add("1.2.3.1")
        assert archive.frame("1.2.3.1", 1) == archive.expected("1.2.3.1", 1)
        assert archive.open_copies() == 1
        wait_for(lambda: archive.open_copies() == 0, timeout=10)
        assert archive.copies.kept_bytes == 0
        assert archive.frame("1.2.3.1", 2) == archive.expected("1.2.3.1", 2)
        assert archive.opens(key) == 4  # read, checked and copied again
    finally:
        archive.copies.close()
    assert archive.open_copies() == 0


def test_the_least_recently_used_copy_makes_room_and_a_larger_one_is_never_kept(
    tmp_path: Path,
) -> None:
    size = len(_object(40, ExplicitVRLittleEndian)[0])
    archive = _Archive(tmp_path, KeptCopies(2 * size + MiB))
    try:
        first, second, third = (archive.add(f"1.2.3.{n}") for n in (1, 2, 3))
        archive.frame("1.2.3.1", 1)
        archive.frame("1.2.3.2", 1)
        archive.frame("1.2.3.1", 2)  # the first used last: the second goes for the third
        archive.frame("1.2.3.3", 1)
        assert archive.open_copies() == 2
        archive.frame("1.2.3.1", 3)
        archive.frame("1.2.3.3", 2)
        archive.frame("1.2.3.2", 2)
        assert (archive.opens(first), archive.opens(second), archive.opens(third)) == (2, 4, 2)
        assert archive.copies.kept_bytes <= archive.copies.limit
        big = archive.add("1.2.3.4", frames=120)  # 60 MiB, over the limit
        archive.frame("1.2.3.4", 1)
        archive.frame("1.2.3.4", 2)
        assert archive.opens(big) == 4
        assert archive.open_copies() == 2
    finally:
        archive.copies.close()
    assert archive.open_copies() == 0


def test_a_copy_that_fails_its_check_is_a_500_and_never_kept(archive: Any) -> None:
    key = archive.add("1.2.3.1")
    archive.store.changed.add(key)  # changed between its SHA-256 pass and its copy
    path = f"/studies/{STUDY}/series/{SERIES}/instances/1.2.3.1/frames/1"
    assert archive.client.get(path, headers={"Accept": OCTETS}).status_code == 500
    assert archive.copies.kept == 0 and archive.open_copies() == 0
    archive.store.changed.clear()
    archive.store.opens.clear()
    assert archive.frame("1.2.3.1", 1) == archive.expected("1.2.3.1", 1)
    assert archive.opens(key) == 2 and archive.copies.kept == 1


def test_an_instance_stored_again_is_read_again_not_from_the_old_copy(archive: Any) -> None:
    old = archive.add("1.2.3.1")
    assert archive.frame("1.2.3.1", 1) == archive.expected("1.2.3.1", 1)
    new = archive.add("1.2.3.1")  # sent again: a new key, other bytes (a new SOP... UIDs)
    assert new != old
    assert archive.frame("1.2.3.1", 1) == archive.expected("1.2.3.1", 1)
    assert archive.opens(new) == 2 and archive.copies.kept == 2


def test_a_deflated_objects_inflated_copy_is_kept(archive: Any) -> None:
    key = archive.add("1.2.3.1", syntax=DeflatedExplicitVRLittleEndian)
    assert len(archive.store.objects[key]) < 8 * MiB  # not streamed: inflated per request
    for number in (1, 2, 40):
        assert archive.frame("1.2.3.1", number) == archive.expected("1.2.3.1", number)
    assert archive.opens(key) == 1 and archive.copies.kept == 1


def test_a_dropped_copy_stays_readable_until_its_last_reader_closes(tmp_path: Path) -> None:
    """Each view is a descriptor of its own on the copy: the copy's file is closed when it
    is dropped, and the data stays on disk until the last view is closed."""
    copies = KeptCopies(MiB)
    ref = InstanceRef(SECONDARY_CAPTURE, "1.2.3", ExplicitVRLittleEndian, "k", "0" * 64)
    made = tempfile.TemporaryFile(dir=tmp_path)  # noqa: SIM115 - the copies close it
    made.write(bytes(range(256)) * 1024)
    made.seek(0)
    first = copies.keep(ref, made)
    second = copies.reader(ref)
    assert second is not None
    first.seek(1000)
    assert first.read(4) == bytes([232, 233, 234, 235])
    assert second.read(2) == b"\x00\x01"  # each at its own position
    copies.close()
    assert copies.reader(ref) is None and copies.kept_bytes == 0 and made.closed
    held = _held(tmp_path)
    assert held == 2  # two requests still read it
    first.close()
    second.seek(-1, io.SEEK_END)
    assert second.read() == b"\xff"
    second.close()
    assert _held(tmp_path) == 0


def _held(directory: Path) -> int:
    """The descriptors of this process on files of ``directory``."""
    prefix = str(directory.resolve()) + "/"
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held += os.readlink(f"/proc/self/fd/{fd}").startswith(prefix)
    return held


def test_a_copy_in_memory_is_given_back_as_it_is() -> None:
    copies = KeptCopies(MiB)
    ref = InstanceRef(SECONDARY_CAPTURE, "1.2.3", ExplicitVRLittleEndian, "k", "0" * 64)
    small = io.BytesIO(b"small")
    assert copies.keep(ref, small) is small and copies.kept == 0


@pytest.mark.parametrize("limit,kept", [(None, True), (0, False)])
def test_the_setting_gives_mimic_web_its_kept_copies(tmp_path: Path, limit: int | None,
                                                      kept: bool) -> None:
    extra = {} if limit is None else {"web_kept_copies_bytes": limit}
    web = WebArchive(Settings(data_dir=tmp_path, web_auth="none", **extra))
    web.open()
    try:
        assert web.context is not None
        assert (web.context.copies is not None) is kept
        if kept:
            assert web.context.copies.limit == 512 * MiB
    finally:
        web.stop()


def test_a_large_object_header_parse_reads_through_the_view(archive: Any) -> None:
    """The view is a file pydicom reads in place (``header_of``), as the copy was."""
    archive.add("1.2.3.1")
    archive.frame("1.2.3.1", 1)
    ref = archive.finder.refs["1.2.3.1"]
    view = archive.copies.reader(ref)
    assert view is not None
    with view:
        ds = pydicom.dcmread(view, defer_size=1024, force=True)
        assert ds.NumberOfFrames == 40 and ds.PatientID == "LARGE"


def _encapsulated(uid: str, frames: int) -> bytes:
    """A JPEG Baseline multi-frame object with an Extended Offset Table of ``frames`` x 8
    bytes: over 1 KiB, a value the renderer's header parse leaves deferred."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate_extended

    pieces = [b"\xff\xd8" + bytes([n % 251]) * 50_000 + b"\xff\xd9" for n in range(frames)]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG_BASELINE
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.NumberOfFrames = frames
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = (
        encapsulate_extended(pieces))
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_deferred_value_is_read_through_the_view(archive: Any) -> None:
    """pydicom takes an ``io.BufferedReader`` for a file it opened by name and reads a
    deferred value again from its ``name``: through such a view every frame of an object
    with an Extended Offset Table over 1 KiB was a 500 (review)."""
    data = _encapsulated("1.2.3.9", 200)  # 10 MiB
    key = archive.put("1.2.3.9", data, JPEG_BASELINE)
    for number in (1, 2, 200):
        answer = archive.client.get(
            f"/studies/{STUDY}/series/{SERIES}/instances/1.2.3.9/frames/{number}",
            headers={"Accept": 'multipart/related; type="image/jpeg"'})
        assert answer.status_code == 200, answer.text
        assert b"\xff\xd8" + bytes([(number - 1) % 251]) * 50_000 + b"\xff\xd9" in answer.content
    assert archive.opens(key) == 2 and archive.copies.kept == 1


def test_a_closed_view_reads_nothing(archive: Any) -> None:
    """A closed view does not hand out the copy's descriptor, whose number another file
    may hold by then (review)."""
    archive.add("1.2.3.1")
    archive.frame("1.2.3.1", 1)
    view = archive.copies.reader(archive.finder.refs["1.2.3.1"])
    assert view is not None
    view.close()
    view.close()  # once released, not twice
    for use in (view.fileno, view.read, lambda: view.seek(0), view.tell,
                lambda: view.readinto(bytearray(4))):
        with pytest.raises(ValueError):
            use()
    assert archive.open_copies() == 1  # the copy itself is still kept


def test_a_view_closed_by_the_garbage_collector_under_the_lock_does_not_hang(
    archive: Any,
) -> None:
    """An unclosed view is closed by the garbage collector, which may run in a thread that
    holds the copies' lock (``keep`` allocates under it): closing a view must not take that
    lock (review: with a count of readers released under it, every request after it hung,
    and the shutdown too; 18 of 100 exits hung on a view collected at the interpreter's
    end). A view is a descriptor of its own now, closed without the lock."""
    archive.add("1.2.3.1")
    archive.frame("1.2.3.1", 1)
    view = archive.copies.reader(archive.finder.refs["1.2.3.1"])
    assert view is not None
    done = threading.Event()

    def close_under_the_lock() -> None:
        with archive.copies._lock:
            view.close()
        done.set()

    threading.Thread(target=close_under_the_lock, daemon=True).start()
    assert done.wait(10)
    assert archive.frame("1.2.3.1", 2) == archive.expected("1.2.3.1", 2)


def test_a_copy_whose_size_cannot_be_read_is_closed_not_kept(tmp_path: Path) -> None:
    copies = KeptCopies(MiB)
    ref = InstanceRef(SECONDARY_CAPTURE, "1.2.3", ExplicitVRLittleEndian, "k", "0" * 64)
    made = tempfile.TemporaryFile(dir=tmp_path)  # noqa: SIM115 - the copies close it
    made.write(b"x")

    def failing_flush() -> None:
        raise OSError(5, "I/O error")

    made.flush = failing_flush  # type: ignore[method-assign]
    with pytest.raises(OSError):
        copies.keep(ref, made)
    assert made.closed and copies.kept == 0


def test_requests_at_once_for_a_small_object_do_not_wait_for_one_another(
    archive: Any,
) -> None:
    """A small object is copied in memory, never kept: once that is known, its requests at
    once each read it beside the others, as before (review: each wave waited for a first
    request that kept nothing, twice the time)."""
    data, _ds = large_image(256, 256, 4, ExplicitVRLittleEndian, study=STUDY, series=SERIES)
    key = archive.put("1.2.3.5", data, ExplicitVRLittleEndian)  # 512 KiB: held in memory
    archive.frame("1.2.3.5", 1)
    archive.store.slow = 1.0  # each open: long enough for all four to be in it at once
    archive.at_once("1.2.3.5", [1, 2, 3, 4])
    assert archive.opens(key) == 5 and archive.store.most_at_once == 4
    assert archive.copies.kept == 0
