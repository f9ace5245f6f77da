"""The ObjectStore contract, run against every backend: files and Blob Storage (Azurite).

The same test body runs for each backend, so the DIMSE code can rely on one behaviour:
``KeyError`` for a missing key, ``OutOfResources`` for a store that cannot keep bytes, keys
listed back as they were given, and large objects streamed with bounded memory.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import shutil
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mimic_server.dimse.received import _from_spool
from mimic_server.errors import OutOfResources
from mimic_server.storage import ObjectStore, azure_blob
from mimic_server.storage.azure_blob import AzureBlobStore, blob_service_client
from mimic_server.storage.filesystem import FilesystemStore
from tests.azurite import Azurite
from tests.spooled import FILE_META, data_set, spooled

KEY = "ab/1.2.3/1.2.3.4/1.2.3.4.5.0123456789abcdef.dcm"
MiB = 1024 * 1024


def _azure_store(azurite: Azurite, **kwargs: object) -> AzureBlobStore:
    service = blob_service_client(connection_string=azurite.connection_string, retries=1,
                                  timeout=5)
    return AzureBlobStore(service, f"c{uuid.uuid4().hex[:20]}", **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=["filesystem", "azure_blob"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "filesystem":
        return FilesystemStore(tmp_path / "objects", fsync=False)
    return _azure_store(request.getfixturevalue("azurite"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_open_round_trip(store: ObjectStore) -> None:
    meta, body = b"M" * 300, bytes(range(256)) * 40
    size = store.put(KEY, [meta, memoryview(body)], _sha(meta + body))
    assert size == len(meta) + len(body)
    with store.open(KEY) as fh:
        assert fh.read() == meta + body
    assert store.exists(KEY)


def test_empty_object(store: ObjectStore) -> None:
    assert store.put(KEY, [], _sha(b"")) == 0
    with store.open(KEY) as fh:
        assert fh.read() == b""


def test_missing_key(store: ObjectStore) -> None:
    with pytest.raises(KeyError):
        store.open(KEY)
    assert not store.exists(KEY)
    store.delete(KEY)  # not an error


def test_delete(store: ObjectStore) -> None:
    store.put(KEY, [b"x"], _sha(b"x"))
    store.delete(KEY)
    assert not store.exists(KEY)
    with pytest.raises(KeyError):
        store.open(KEY)


def test_iter_keys_lists_what_was_put(store: ObjectStore) -> None:
    keys = {KEY, "cd/9.8/9.8.7/9.8.7.6.fedcba9876543210.dcm", "ab/1.2.3/1.2.3.5/1.1.aa.dcm"}
    for key in keys:
        store.put(key, [key.encode()], _sha(key.encode()))
    assert set(store.iter_keys()) == keys


def test_blocks_are_cut_across_chunk_boundaries(azurite: Azurite) -> None:
    store = _azure_store(azurite, block_size=1000)
    chunks = [b"a" * 10, memoryview(os.urandom(4321)), b"", b"z" * 999]
    data = b"".join(bytes(c) for c in chunks)
    assert store.put(KEY, chunks, _sha(data)) == len(data)
    blocks = store.container.get_blob_client(KEY).get_block_list("committed")[0]
    assert [b.size for b in blocks] == [1000] * 5 + [330]
    with store.open(KEY) as fh:
        assert fh.read() == data


@pytest.mark.parametrize("size", [10, 5 * MiB + 7])
def test_blob_carries_content_md5_and_sha256(azurite: Azurite, size: int) -> None:
    """Single-shot and block uploads alike: Content-MD5 of the whole, sha256 in metadata."""
    store = _azure_store(azurite)
    data = os.urandom(size)
    store.put(KEY, [data[:3], memoryview(data)[3:]], _sha(data))
    props = store.container.get_blob_client(KEY).get_blob_properties()
    assert bytes(props.content_settings.content_md5) == hashlib.md5(data).digest()
    assert props.metadata == {"sha256": _sha(data)}
    assert props.content_settings.content_type == "application/dicom"
    assert props.blob_type == "BlockBlob"
    assert base64.b64encode(hashlib.md5(data).digest())  # the property the service returns


def test_single_shot_put_hashes_the_body_once_and_the_service_checks_it(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MD5 of a one-request put is ours, sent as Content-MD5: the SDK does not hash the
    body again, and a body that does not match it is refused, nothing stored."""
    from azure.storage.blob._shared import policies

    def no_second_hash(data: object) -> bytes:
        raise AssertionError("the SDK hashed the body a second time")

    store = _azure_store(azurite)
    data = os.urandom(600_000)
    with monkeypatch.context() as patched:  # reads check each range's MD5: not patched
        patched.setattr(policies, "calculate_content_md5", no_second_hash)
        store.put(KEY, [data], _sha(data))
    with store.open(KEY) as fh:
        assert fh.read() == data

    real_md5 = hashlib.md5

    class WrongMd5:  # the MD5 of other bytes than those sent
        def __init__(self, **_: object) -> None:
            self._hash = real_md5(b"not the body")

        def update(self, data: bytes) -> None:
            self._hash.update(data)

        def digest(self) -> bytes:
            return self._hash.digest()

    monkeypatch.setattr(azure_blob.hashlib, "md5", WrongMd5)
    with pytest.raises(OutOfResources, match="Md5Mismatch"):
        store.put(KEY + ".2", [data], _sha(data))
    assert not store.exists(KEY + ".2")


def test_bytes_that_cannot_be_read_midway_are_out_of_resources(store: ObjectStore) -> None:
    """The object's own bytes fail to come midway (a spool file's disk gives EIO), after
    more than one blob block was staged: the put is refused as the store's own failures are
    (``OutOfResources``: a C-STORE's 0xA700, not 0xC211 for a bug), nothing under the key."""

    def chunks() -> Iterator[bytes]:
        yield b"x" * (5 * MiB)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with pytest.raises(OutOfResources):
        store.put(KEY, chunks(), _sha(b""))
    assert not store.exists(KEY)
    assert list(store.iter_keys()) == []


def test_put_failure_is_out_of_resources_filesystem(tmp_path: Path) -> None:
    # No spare files: their thread would be making them while the directory is removed.
    store = FilesystemStore(tmp_path / "objects", fsync=False, spare_files=0)
    shutil.rmtree(tmp_path / "objects" / ".incoming")
    (tmp_path / "objects" / ".incoming").write_bytes(b"not a directory")
    with pytest.raises(OutOfResources):
        store.put(KEY, [b"x"], _sha(b"x"))


def test_store_that_stays_down_is_out_of_resources_quickly(
    tmp_path: Path,
) -> None:
    """A dead endpoint: every operation fails with OutOfResources in bounded time."""
    own = Azurite(tmp_path / "azurite").start()
    try:
        store = _azure_store(own)
        store.put(KEY, [b"before"], _sha(b"before"))
    finally:
        own.stop()
    started = time.monotonic()
    with pytest.raises(OutOfResources):
        store.put(KEY + ".2", [b"x" * (5 * MiB)], "0" * 64)
    with pytest.raises(OutOfResources):
        store.open(KEY)
    with pytest.raises(OutOfResources):
        list(store.iter_keys())
    assert time.monotonic() - started < 30


def _big_chunks(total: int) -> Iterator[memoryview]:
    """Like C-STORE: a small file meta, then the dataset as one memoryview."""
    yield memoryview(b"\x00" * 132)
    yield memoryview(bytearray(total - 132))


def test_200_mb_streamed_with_bounded_memory(store: ObjectStore) -> None:
    total = 200 * MiB
    chunks = list(_big_chunks(total))  # the received object, already in memory
    expected = hashlib.sha256()
    for chunk in chunks:
        expected.update(chunk)
    tracemalloc.start()
    try:
        assert store.put(KEY, chunks, expected.hexdigest()) == total
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest, read = hashlib.sha256(), 0
        with store.open(KEY) as fh:
            while block := fh.read(MiB):
                digest.update(block)
                read += len(block)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read == total and digest.hexdigest() == expected.hexdigest()
    # The store's own buffers: a few 4 MiB blocks, never the object.
    assert put_peak < 32 * MiB, put_peak
    assert read_peak < 32 * MiB, read_peak


def test_a_spooled_object_is_kept_whole(store: ObjectStore, tmp_path: Path) -> None:
    """A large C-STORE's spool, which the file store names and Blob Storage reads back in
    staged blocks (past its 4 MiB block size): the same bytes, our File Meta first."""
    data = data_set(9 * MiB)
    received = _from_spool(spooled(tmp_path, data))
    assert store.put(KEY, received.chunks, received.sha256) == len(FILE_META) + len(data)
    with store.open(KEY) as fh:
        kept = fh.read()
    assert kept == FILE_META + data
    assert _sha(kept) == received.sha256
    if isinstance(store, FilesystemStore):
        assert (store.spools_named, store.spools_copied) == (1, 0)


def test_check_answers_for_a_usable_store(store: ObjectStore) -> None:
    store.check()  # the readiness probe's question: nothing raised


def test_check_raises_when_the_store_is_gone(
    store: ObjectStore, tmp_path: Path
) -> None:
    if isinstance(store, FilesystemStore):
        store.root.rename(tmp_path / "gone")
    else:
        assert isinstance(store, AzureBlobStore)
        store.container.delete_container()
    with pytest.raises(OutOfResources):
        store.check()
