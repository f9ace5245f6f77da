"""A large data set received whole is hashed beside its put, not before it: the put (whose
fsyncs are a wait) and the SHA-256 run at once, and the index row still gets the digest of
exactly the bytes stored. A store that keeps the digest with the object gets it first."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from mimic_server.archive.ingest import HASH_BESIDE_PUT, ReceivedObject, keep
from mimic_server.codec.file_meta import encode_file_meta
from mimic_server.errors import OutOfResources
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.repository import SqlIndex
from mimic_server.storage.memory import MemoryStore
from tests.data import ct_small

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _received(pixel_bytes: int, sop_instance_uid: str = "1.2.826.0.1.3680043.8.498.77.1"
              ) -> tuple[ReceivedObject, InstanceAttributes, str]:
    """A CT data set with ``pixel_bytes`` of Pixel Data; (object, attributes, its SHA-256)."""
    ds = pydicom.dcmread(ct_small())
    ds.SOPInstanceUID = sop_instance_uid
    ds.PixelData = bytes(range(256)) * (pixel_bytes // 256)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    data = out.getvalue()
    meta = encode_file_meta(str(ds.SOPClassUID), sop_instance_uid, EXPLICIT_LE, "T")
    received = ReceivedObject.of(meta, memoryview(data), EXPLICIT_LE)
    return received, InstanceAttributes.from_header(received.header), \
        hashlib.sha256(meta + data).hexdigest()


@pytest.fixture
def beside(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, threading.Event]]:
    """Events that only a hash and a put running at the same time can both see: a deferred
    hash (``ReceivedObject.digest``) starts once the put has begun, and the put
    (:class:`WaitingStore`) ends once the hash is done. Taken before the put or after it,
    one of the two waits in vain."""
    events = {"put": threading.Event(), "hashed": threading.Event()}
    digest = ReceivedObject.digest

    def watched(self: ReceivedObject) -> str:
        if self.sha256 is not None:
            return digest(self)
        assert events["put"].wait(5), "hashed before the put, not beside it"
        try:
            return digest(self)
        finally:
            events["hashed"].set()

    monkeypatch.setattr(ReceivedObject, "digest", watched)
    yield events


class WaitingStore(MemoryStore):
    """A store whose put ends only once the object's hash is done (see ``beside``)."""

    def __init__(self, events: dict[str, threading.Event]) -> None:
        super().__init__()
        self.events = events
        self.given: list[str | None] = []
        self.hashed_during_put = False

    def put(self, key: str, chunks: Iterable[bytes | memoryview], sha256: str | None) -> int:
        self.given.append(sha256)
        self.events["put"].set()
        self.hashed_during_put = self.events["hashed"].wait(5)
        return super().put(key, chunks, sha256)


def test_a_small_data_set_is_hashed_when_received() -> None:
    received, _attrs, sha256 = _received(1024)
    assert received.sha256 == sha256 == received.digest()


@pytest.mark.parametrize("series", ["new", "known"])
def test_a_large_data_set_is_hashed_beside_its_put(
    index: SqlIndex, beside: dict[str, threading.Event], series: str
) -> None:
    if series == "known":
        keep(MemoryStore(), index, *_received(1024, "1.2.826.0.1.3680043.8.498.77.2")[:2], "t")
    received, attrs, sha256 = _received(HASH_BESIDE_PUT + 4096)
    assert received.sha256 is None  # left for the ingest
    store = WaitingStore(beside)
    keep(store, index, received, attrs, "t")
    assert store.hashed_during_put and store.given == [None]
    stored = index.get_instance(attrs.sop_instance_uid)
    assert stored is not None and stored.sha256 == sha256
    assert hashlib.sha256(next(iter(store.objects.values()))).hexdigest() == sha256


def test_a_store_that_keeps_the_digest_gets_it_before_its_put(index: SqlIndex) -> None:
    received, attrs, sha256 = _received(HASH_BESIDE_PUT + 4096)

    class Recording(MemoryStore):
        records_sha256 = True
        given: list[str | None] = []

        def put(self, key: str, chunks: Iterable[bytes | memoryview],
                sha256: str | None) -> int:
            self.given.append(sha256)
            return super().put(key, chunks, sha256)

    store = Recording()
    keep(store, index, received, attrs, "t")
    assert store.given == [sha256]
    stored = index.get_instance(attrs.sop_instance_uid)
    assert stored is not None and stored.sha256 == sha256


def test_a_failed_put_returns_only_once_the_hash_is_done(
    index: SqlIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hash reads the data set's buffer, which its owner frees once the C-STORE is
    answered: a failure must not answer while the hash still reads it."""
    received, attrs, _sha256 = _received(HASH_BESIDE_PUT + 4096)
    release = threading.Event()
    digest = ReceivedObject.digest

    def slow(self: ReceivedObject) -> str:
        assert release.wait(30)
        return digest(self)

    monkeypatch.setattr(ReceivedObject, "digest", slow)

    class Failing(MemoryStore):
        def put(self, key: str, chunks: Iterable[bytes | memoryview],
                sha256: str | None) -> int:
            threading.Timer(0.2, release.set).start()  # the hash is still held back here
            raise OutOfResources("object store unavailable")

    with pytest.raises(OutOfResources):
        keep(Failing(), index, received, attrs, "t")
    assert release.is_set()  # keep waited for the held-back hash before it raised
    assert index.count_instances() == 0

