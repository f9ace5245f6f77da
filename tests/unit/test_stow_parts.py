"""The pieces of STOW-RS below HTTP: the streaming multipart splitter (any chunking gives the
same parts; malformed bodies refused), the reading of a part's own File Meta, and a part
kept in bounded memory or spooled, refused when too large or of an unkept syntax."""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimic_server.codec import file_meta
from mimic_server.codec.file_meta import FileMetaReader, encode_file_meta, read_file_meta
from mimic_server.errors import CannotUnderstand, DicomStatusError
from mimic_server.web.dicomweb.multipart import (
    MAX_PARTS,
    MalformedMultipart,
    MultipartSplitter,
    boundary_of,
)
from mimic_server.web.dicomweb.stow_part import PartMemory, ReceivedPart
from tests.data import ct_small, storable_files
from tests.large_objects import write_large

BOUNDARY = "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"


class Collected:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.data = bytearray()
        self.ended = False

    def write(self, data: memoryview) -> None:
        assert not self.ended
        self.data += data

    def end(self) -> None:
        self.ended = True


def body(parts: list[bytes], boundary: str = BOUNDARY, preamble: bytes = b"",
         epilogue: bytes = b"") -> bytes:
    out = preamble
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode() + epilogue


def split(data: bytes, sizes: list[int] | None = None, boundary: str = BOUNDARY
          ) -> list[Collected]:
    parts: list[Collected] = []

    def new_part(headers: dict[str, str]) -> Collected:
        parts.append(Collected(headers))
        return parts[-1]

    splitter = MultipartSplitter(boundary, new_part)
    pos = 0
    for size in sizes or [len(data)]:
        splitter.feed(data[pos:pos + size])
        pos += size
    splitter.feed(data[pos:])
    splitter.close()
    return parts


# Bytes that look like the start of a delimiter, inside the parts.
TRICKY = [b"", b"\r\n", b"\r\n--", b"--" + BOUNDARY.encode(), b"\r\n--0f3cf5c0",
          b"x" * 1000 + b"\r\n-" + b"\r\n--" + BOUNDARY[:-1].encode() + b"\r\n"]


@settings(max_examples=200, deadline=None)
@given(contents=st.lists(st.sampled_from(TRICKY) | st.binary(max_size=300), min_size=1,
                         max_size=5),
       sizes=st.lists(st.integers(min_value=1, max_value=50), max_size=40),
       preamble=st.sampled_from([b"", b"a preamble\r\n"]))
def test_any_chunking_gives_the_same_parts(contents: list[bytes], sizes: list[int],
                                           preamble: bytes) -> None:
    parts = split(body(contents, preamble=preamble, epilogue=b"ignored"), sizes)
    assert [bytes(p.data) for p in parts] == contents
    assert all(p.ended for p in parts)
    assert parts[0].headers == {"content-type": "application/dicom"}


def test_headers_folded_and_absent() -> None:
    data = (f"--{BOUNDARY}\r\nContent-Type: application/dicom;\r\n transfer-syntax=1.2\r\n"
            f"X-Other:  y \r\n\r\nabc\r\n--{BOUNDARY}\r\n\r\ndef\r\n--{BOUNDARY}--").encode()
    parts = split(data)
    assert parts[0].headers == {"content-type": "application/dicom; transfer-syntax=1.2",
                                "x-other": "y"}
    assert parts[1].headers == {} and bytes(parts[1].data) == b"def"


@pytest.mark.parametrize("data", [
    b"",                                                        # no delimiter at all
    f"--{BOUNDARY}\r\n\r\nabc".encode(),                        # no close delimiter
    f"--{BOUNDARY}junk\r\n\r\nabc\r\n--{BOUNDARY}--".encode(),  # text after the boundary
    f"--{BOUNDARY}\r\nno colon\r\n\r\nabc\r\n--{BOUNDARY}--".encode(),
    f"--{BOUNDARY}\r\nA: {'x' * 20000}\r\n\r\nabc\r\n--{BOUNDARY}--".encode(),
], ids=["empty", "unclosed", "junk-after-boundary", "header-without-colon", "huge-headers"])
def test_malformed_bodies_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedMultipart):
        split(data)


def test_the_buffer_stays_bounded() -> None:
    parts: list[Collected] = []
    splitter = MultipartSplitter(BOUNDARY, lambda h: parts.append(Collected(h)) or parts[-1])
    splitter.feed(f"--{BOUNDARY}\r\n\r\n".encode())
    for _ in range(200):
        splitter.feed(b"\x00" * 65536)
        assert len(splitter._buffer) < 65536 + 100
    splitter.feed(f"\r\n--{BOUNDARY}--".encode())
    splitter.close()
    assert len(parts[0].data) == 200 * 65536


def test_a_body_of_more_than_max_parts_is_malformed() -> None:
    """Each part costs its request a trip through the ingest path and an item of the
    answer, even an empty one of 9 bytes: their number is bounded, the rest not split."""
    parts: list[Collected] = []
    splitter = MultipartSplitter("b", lambda h: parts.append(Collected(h)) or parts[-1])
    splitter.feed(b"--b\r\n\r\n" + b"\r\n--b\r\n\r\n" * (MAX_PARTS - 1))
    assert splitter.parts == MAX_PARTS
    with pytest.raises(MalformedMultipart, match="more than"):
        splitter.feed(b"\r\n--b\r\n\r\n")
    assert len(parts) == MAX_PARTS
    three = MultipartSplitter(BOUNDARY, Collected, max_parts=3)
    three.feed(body([b"x"] * 3))
    three.close()
    with pytest.raises(MalformedMultipart):
        MultipartSplitter(BOUNDARY, Collected, max_parts=3).feed(body([b"x"] * 4))


def test_content_type_parameters() -> None:
    assert boundary_of('multipart/related; type="application/dicom"; boundary="a;b"') == (
        "multipart/related", {"type": "application/dicom", "boundary": "a;b"})
    assert boundary_of("Multipart/Related;boundary=xyz") == (
        "multipart/related", {"boundary": "xyz"})


# -- the part's File Meta ---------------------------------------------------------------------


def test_file_meta_of_every_shipped_file() -> None:
    for storable in storable_files():
        data = storable.path.read_bytes()
        read = read_file_meta(data)
        assert read is not None
        assert (read.sop_class_uid, read.sop_instance_uid, read.transfer_syntax_uid,
                read.dataset_offset) == (storable.sop_class_uid, storable.sop_instance_uid,
                                         storable.transfer_syntax_uid,
                                         storable.dataset_offset), storable.path
        # fed a byte at a time: None until the group has ended, then the same answer
        cut = next(n for n in range(read.dataset_offset + 9) if read_file_meta(data[:n]))
        assert cut <= read.dataset_offset + 8


def test_file_meta_without_preamble() -> None:
    data = ct_small().read_bytes()[128 + 4:]
    read = read_file_meta(data)
    assert read is not None and data[read.dataset_offset:read.dataset_offset + 2] == b"\x08\x00"


@pytest.mark.parametrize("data", [
    b"\x00" * 128 + b"DIXM" + b"\x00" * 100,
    b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00\x01\x02" + b"\x00" * 100,  # a VR of bytes
    b"\xff" * 300,
])
def test_not_a_part10_file(data: bytes) -> None:
    with pytest.raises(CannotUnderstand):
        read_file_meta(data)


def test_file_meta_cut_short_when_whole() -> None:
    data = ct_small().read_bytes()[:150]
    assert read_file_meta(data) is None
    with pytest.raises(CannotUnderstand):
        read_file_meta(data, whole=True)


# -- a part in bounded memory ---------------------------------------------------------------


def _fed(data: bytes, tmp_path: Path, *, max_bytes: int = 1 << 30, in_memory: int = 1 << 20,
         headers: dict[str, str] | None = None, chunk: int = 4096) -> ReceivedPart:
    part = ReceivedPart(headers or {"content-type": "application/dicom"}, max_bytes,
                        tmp_path / "spool", in_memory=in_memory)
    for pos in range(0, len(data), chunk):
        part.write(memoryview(data[pos:pos + chunk]))
    part.end()
    return part


@pytest.mark.parametrize("in_memory", [1 << 20, 1024], ids=["memory", "spooled"])
def test_a_part_is_its_data_set_as_received(tmp_path: Path, in_memory: int) -> None:
    data = ct_small().read_bytes()
    part = _fed(data, tmp_path, in_memory=in_memory)
    received = part.received()
    offset = part.declared.dataset_offset  # type: ignore[union-attr]
    stored = b"".join(bytes(c) for c in received.chunks)
    assert stored.endswith(data[offset:])
    ds = pydicom.dcmread(io.BytesIO(stored))
    assert ds.file_meta.ImplementationVersionName == "MIMIC_010"
    assert ds.SOPInstanceUID == part.declared.sop_instance_uid  # type: ignore[union-attr]
    assert received.size == len(stored)
    part.close()


def test_a_closed_part_maps_nothing_though_its_object_lives_on(tmp_path: Path) -> None:
    """A failed store's received object can outlive the part (a cycle through its
    exception's traceback): closing the part still unmaps its spool, whose disk it holds."""
    part = _fed(ct_small().read_bytes(), tmp_path, in_memory=1024)
    kept_alive = [part.received()]
    spool = part._spool
    assert spool is not None
    inode = str(os.fstat(spool.fileno()).st_ino)

    def mapped() -> bool:
        return any(line.split()[4:5] == [inode]
                   for line in Path("/proc/self/maps").read_text().splitlines())

    assert mapped()
    part.close()
    assert not mapped()
    with pytest.raises(ValueError):
        kept_alive[0].dataset.tobytes()  # released: nobody reads it once the part is done


def test_too_large_is_out_of_resources_and_dropped(tmp_path: Path) -> None:
    data = ct_small().read_bytes()
    part = _fed(data, tmp_path, max_bytes=1000, in_memory=512)
    with pytest.raises(DicomStatusError) as refused:
        part.received()
    assert refused.value.status == 0xA700
    assert part.declared is not None  # the failure can still name the instance
    assert part._spool is None and not part._head


def test_unkept_transfer_syntax_is_refused_at_the_file_meta(tmp_path: Path) -> None:
    data = ct_small().read_bytes()
    read = read_file_meta(data)
    assert read is not None
    # JPIP HTJ2K Referenced Deflate: a syntax the archive does not keep
    meta = encode_file_meta(read.sop_class_uid, read.sop_instance_uid,
                            "1.2.840.10008.1.2.4.205", "")
    part = _fed(meta + data[read.dataset_offset:], tmp_path)
    with pytest.raises(DicomStatusError) as refused:
        part.received()
    assert refused.value.status == 0xC122


@pytest.mark.parametrize("data", [b"", b"garbage" * 50, ct_small().read_bytes()[:140]],
                         ids=["empty", "garbage", "cut-in-file-meta"])
def test_not_part10_is_cannot_understand(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(DicomStatusError) as refused:
        _fed(data, tmp_path).received()
    assert refused.value.status == 0xC000


def test_a_part_of_another_type_is_refused(tmp_path: Path) -> None:
    part = _fed(ct_small().read_bytes(), tmp_path,
                headers={"content-type": "application/dicom+json"})
    with pytest.raises(DicomStatusError) as refused:
        part.received()
    assert refused.value.status == 0xC000


def _with_longer_file_meta(data: bytes) -> bytes:
    """The same object behind a File Meta of the sender's own, longer than the archive's
    (a Source AE Title and a Private Information Creator UID)."""
    read = read_file_meta(data)
    assert read is not None
    meta = encode_file_meta(read.sop_class_uid, read.sop_instance_uid,
                            read.transfer_syntax_uid, "SENDER_AE_TITLE")
    assert len(meta) != read.dataset_offset
    return meta + data[read.dataset_offset:]


@pytest.mark.parametrize("longer", [False, True], ids=["as-shipped", "sender-file-meta"])
def test_a_spooled_part_is_the_object_as_kept(tmp_path: Path, longer: bool) -> None:
    """The spool holds the archive's File Meta, then the data set: what the store would
    have written, so that the file store may name it (``whole_file``)."""
    data = ct_small().read_bytes()
    if longer:
        data = _with_longer_file_meta(data)
    in_memory = _fed(data, tmp_path)
    as_kept = b"".join(bytes(c) for c in in_memory.received().chunks)
    in_memory.close()
    part = _fed(data, tmp_path, in_memory=1024)
    received = part.received()
    assert b"".join(bytes(c) for c in received.chunks) == as_kept
    assert received.file_meta == as_kept[:len(received.file_meta)]
    assert received.digest() == hashlib.sha256(as_kept).hexdigest()
    fd = received.chunks.whole_file()  # type: ignore[union-attr]
    assert fd is not None
    try:
        assert os.pread(fd, len(as_kept) + 1, 0) == as_kept
        assert os.fstat(fd).st_nlink == 0  # anonymous until a store names it
    finally:
        os.close(fd)
    part.close()
    assert part.whole_file() is None


def test_a_part_is_offered_whole_only_when_kept_whole(tmp_path: Path) -> None:
    data = ct_small().read_bytes()
    # Held in memory: nothing to name.
    small = _fed(data, tmp_path)
    small.received()
    assert small.whole_file() is None
    # Not ended, then ended but its data set never read.
    part = ReceivedPart({"content-type": "application/dicom"}, 1 << 30, tmp_path / "spool",
                        in_memory=1024)
    part.write(memoryview(data[:1024]))
    part.write(memoryview(data[1024:]))
    assert part._spool is not None and part.whole_file() is None
    part.end()
    assert part.whole_file() is None  # received() not called: not known sound
    part.received()
    fd = part.whole_file()
    assert fd is not None
    os.close(fd)
    # A data set that does not parse is refused and never offered.
    read = read_file_meta(data)
    assert read is not None
    cut = _fed(data[:read.dataset_offset] + b"\x08\x00\x16\x00UI\xff\xff" + b"1" * 2000,
               tmp_path, in_memory=1024)
    with pytest.raises(DicomStatusError):
        cut.received()
    assert cut.whole_file() is None
    # Too large: dropped.
    large = _fed(data, tmp_path, max_bytes=4096, in_memory=1024)
    with pytest.raises(DicomStatusError):
        large.received()
    assert large.whole_file() is None


def test_invalid_declared_uids_are_refused_at_the_file_meta(tmp_path: Path) -> None:
    """As ``received_part10`` refuses them (0xC002), but before anything is spooled: the
    archive's File Meta is made of them."""
    data = ct_small().read_bytes()
    read = read_file_meta(data)
    assert read is not None
    meta = encode_file_meta(read.sop_class_uid, "1.2.3.x", read.transfer_syntax_uid, "")
    part = _fed(meta + data[read.dataset_offset:], tmp_path, in_memory=1024)
    assert part._spool is None
    with pytest.raises(DicomStatusError) as refused:
        part.received()
    assert refused.value.status == 0xC002


def _file_pages_mapped() -> int:
    """Bytes of files mapped into this process and resident (``RssFile``)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("RssFile:"))
    return int(line.split()[1]) * 1024


def test_a_spooled_part_is_hashed_without_mapping_its_pages(tmp_path: Path) -> None:
    """Its header is parsed through a map of the spool (only the header's pages), and its
    SHA-256 read from the file: through the map, every page of the object would count in
    the process's RSS while the part is kept (four 1 GiB parts at once: 4 GB)."""
    path = tmp_path / "large.dcm"
    write_large(path, 48 << 20)
    part = _fed(path.read_bytes(), tmp_path, in_memory=1024, chunk=1 << 20)
    received = part.received()
    before = _file_pages_mapped()
    digest = received.digest()
    assert _file_pages_mapped() - before < 8 << 20
    assert digest == hashlib.sha256(b"".join(bytes(c) for c in received.chunks)).hexdigest()
    part.close()


# -- the memory all parts hold together -----------------------------------------------------


def test_parts_past_the_process_budget_are_spooled_from_their_data_set(tmp_path: Path) -> None:
    """The parts of every request share one budget: past it, a part goes to its spool from
    its data set's first byte (24 requests stalled after 8 MiB each held 196 MiB), and a
    part closed gives its bytes back."""
    data = ct_small().read_bytes()
    read = read_file_meta(data)
    assert read is not None
    memory = PartMemory(len(data) + len(data) // 2)

    def fed() -> ReceivedPart:
        part = ReceivedPart({"content-type": "application/dicom"}, 1 << 30,
                            tmp_path / "spool", memory=memory)
        for pos in range(0, len(data), 4096):
            part.write(memoryview(data[pos:pos + 4096]))
        part.end()
        return part

    first = fed()
    assert first._spool is None and memory.held == len(data)
    second = fed()  # half of it would fit: spooled, from its data set's first byte
    assert second._spool is not None and memory.held == len(data)
    assert second.received().size == first.received().size
    assert (b"".join(bytes(c) for c in second.received().chunks)
            == b"".join(bytes(c) for c in first.received().chunks))
    first.close()
    assert memory.held == 0
    third = fed()  # room again
    assert third._spool is None
    for part in (second, third):
        part.close()
    assert memory.held == 0


def test_a_part_refused_gives_its_memory_back(tmp_path: Path) -> None:
    memory = PartMemory(1 << 20)
    part = ReceivedPart({"content-type": "application/dicom"}, 8000, tmp_path / "spool",
                        memory=memory)
    data = ct_small().read_bytes()
    part.write(memoryview(data[:4096]))
    assert memory.held == 4096
    part.write(memoryview(data[4096:]))  # over the size limit: refused, dropped
    assert part.failure is not None and memory.held == 0


# -- the File Meta read as it arrives -------------------------------------------------------


def test_a_file_meta_read_as_it_arrives_gives_what_read_file_meta_does() -> None:
    for storable in storable_files():
        data = storable.path.read_bytes()
        whole = read_file_meta(data)
        reader = FileMetaReader()
        for end in range(0, len(data) + 7, 7):
            got = reader.read(data[:end])
            assert got == read_file_meta(data[:end]), storable.path
            if got is not None:
                assert got == whole
                break


def test_a_file_meta_trickled_in_is_walked_once(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write went on reading the File Meta from byte 0 until it was complete: 64 KiB
    of 8-byte elements trickled 32 bytes at a time were millions of element reads on the
    event loop. Now each element is read once, whatever the chunking."""
    elements = 2000
    meta = b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x01SH\x00\x00" * elements
    reads = 0

    class CountingStruct:
        @staticmethod
        def unpack_from(fmt: str, buffer: bytes | memoryview, offset: int = 0) -> tuple:
            nonlocal reads
            reads += 1
            return struct.unpack_from(fmt, buffer, offset)

    monkeypatch.setattr(file_meta, "struct", CountingStruct)
    part = ReceivedPart({"content-type": "application/dicom"}, 1 << 30, tmp_path / "spool")
    for pos in range(0, len(meta), 32):
        part.write(memoryview(meta[pos:pos + 32]))
    assert part.declared is None and part.failure is None
    assert reads < 3 * elements, reads  # read again from byte 0: some 500,000
    part.close()
