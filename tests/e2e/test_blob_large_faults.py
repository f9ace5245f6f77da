"""Large objects in the Azure configuration (PostgreSQL + Blob Storage) when things go wrong.

The archive reaches Azurite through a loopback proxy (``tests/blob_faults.py``) that fails,
delays or cuts chosen Blob Storage requests. C-STORE: a multi-block upload failing part-way
or at its commit (0xA700, no index row, no blob; the association goes on), a put slower than
the network timeout while the peer waits (the association is kept), an object exactly at and
one byte past ``MIMIC_MAX_OBJECT_BYTES``, a peer aborting while its blocks are staged, the
same SOP Instance sent again while its first upload runs, a spool directory that fills.
C-GET / C-MOVE: a large blob truncated or replaced behind the archive's back, before the
retrieve and while it is sent (never delivered), a requestor that stops reading (bounded
memory, the association ends at the network timeout), a C-MOVE longer than the network
timeout (the requestor's association and the sub-association both kept).

Objects are 12-24 MiB (one of 64 MiB): above the 8 MiB spool and stream thresholds, several
4 MiB blocks each, small enough to stay fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    SecondaryCaptureImageStorage,
)

from tests.azurite import AZURITE_BLOB, Azurite
from tests.blob_faults import BlobFaults, Seen
from tests.database import migrated_database
from tests.large_objects import dataset_digest, write_large
from tests.support import (
    HOST,
    MimicProcess,
    associate,
    client_context,
    free_port,
    wait_for,
)

pytestmark = [pytest.mark.azurite, pytest.mark.postgres]

MiB = 1 << 20
CONTAINER = "dicom"
GET = PatientRootQueryRetrieveInformationModelGet
MOVE = PatientRootQueryRetrieveInformationModelMove
SC = SecondaryCaptureImageStorage
#: The server's MIMIC_NETWORK_TIMEOUT: short, so that a slow store outlasts it.
NETWORK_TIMEOUT = 6


class Destination:
    """A plain (no TLS) pynetdicom Storage SCP, the C-MOVE destination ``PLAIN``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[str] = []
        ae = AE(ae_title="PLAIN")
        ae.add_supported_context(SC, [ExplicitVRLittleEndian])
        ae.dimse_timeout = ae.network_timeout = 60

        def on_store(event: Any) -> int:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
            return 0

        self.scp = ae.start_server((HOST, self.port), block=False,
                                   evt_handlers=[(evt.EVT_C_STORE, on_store)])


@pytest.fixture(scope="module")
def database(postgres_server: str) -> Iterator[str]:
    with migrated_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """This module's own Azurite."""
    if not AZURITE_BLOB.exists():
        pytest.skip("Azurite is not installed: run scripts/test.sh (npm install)")
    service = Azurite(tmp_path_factory.mktemp("azurite-faults")).start()
    yield service
    client = _clients.pop(service.port, None)
    if client is not None:
        client.close()
    service.stop()


@pytest.fixture(scope="module")
def faults(blob: Azurite) -> Iterator[BlobFaults]:
    proxy = BlobFaults(blob.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture(autouse=True)
def healthy(faults: BlobFaults) -> Iterator[None]:
    """Every test begins and ends with a store that answers."""
    faults.rule = lambda seen: None
    faults.forget()
    yield
    faults.rule = lambda seen: None


@pytest.fixture(scope="module")
def destination() -> Iterator[Destination]:
    saved = _config.STORE_RECV_CHUNKED_DATASET
    _config.STORE_RECV_CHUNKED_DATASET = True  # received objects go to files, not memory
    plain = Destination()
    yield plain
    plain.scp.shutdown()
    _config.STORE_RECV_CHUNKED_DATASET = saved


@pytest.fixture(autouse=True)
def spooled_receive(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom as C-GET SCU writes what it receives to a file, not to memory."""
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)


def _archive(root: Path, database: str, faults: BlobFaults, **settings: str) -> MimicProcess:
    """One worker (its /proc is the process that stores and sends), Blob Storage through
    the proxy, each request tried twice at most, 5 s each."""
    return MimicProcess(
        root / "data", workers="1", database_url=database,
        blob_connection_string=faults.connection_string, blob_container=CONTAINER,
        blob_retries="1", blob_timeout="5", **settings,
    ).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, database: str,
           faults: BlobFaults, destination: Destination) -> Iterator[MimicProcess]:
    registry = {"PLAIN": {"host": HOST, "port": destination.port, "tls": False}}
    process = _archive(tmp_path_factory.mktemp("blob-faults"), database, faults,
                       network_timeout=str(NETWORK_TIMEOUT),
                       move_destinations=json.dumps(registry))
    yield process
    assert process.stop() == 0, process.log()


#: One client of the container per Azurite (its port), straight to the emulator.
_clients: dict[int, ContainerClient] = {}


def _container(blob: Azurite) -> ContainerClient:
    if blob.port not in _clients:
        _clients[blob.port] = BlobServiceClient.from_connection_string(
            blob.connection_string).get_container_client(CONTAINER)
    return _clients[blob.port]


def _rows(database: str, uid: str) -> list[tuple[str, str, int]]:
    """(object key, SHA-256, size) of each index row of ``uid``."""
    dsn = database.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        return [(str(key), str(sha256), int(size)) for key, sha256, size in conn.execute(
            "SELECT object_key, sha256, size FROM instances WHERE sop_instance_uid = %s",
            (uid,)).fetchall()]


def _blobs_of(blob: Azurite, uid: str) -> list[str]:
    """The blobs of ``uid`` (committed: blocks staged and never committed are not a blob,
    and the service drops them in a week; a Delete Blob does not reach them)."""
    return sorted(name for name in _container(blob).list_blob_names() if uid in name)


def _sound(blob: Azurite, database: str, uid: str) -> bytes:
    """The one object of ``uid``: its row names the one blob of that UID, whose bytes hash
    to the row's SHA-256 and size."""
    [(key, sha256, size)] = _rows(database, uid)
    assert _blobs_of(blob, uid) == [key]
    data = _container(blob).get_blob_client(key).download_blob().readall()
    assert hashlib.sha256(data).hexdigest() == sha256 and len(data) == size
    return data


def _tls(server: MimicProcess) -> Any:
    return (client_context(server.client_cert, server.client_key, server.ca_cert), "localhost")


def _assoc(server: MimicProcess) -> Any:
    assoc = associate(server.port, _tls(server)[0], contexts=[SC],
                      transfer_syntaxes=[ExplicitVRLittleEndian])
    assert assoc.is_established
    assoc.dimse_timeout = assoc.network_timeout = 60
    return assoc


def _store(server: MimicProcess, path: Path) -> None:
    assoc = _assoc(server)
    try:
        assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.release()


def _large(path: Path, size: int) -> str:
    """``write_large``'s object (a new study and series); its SOP Instance UID."""
    return write_large(path, size)


def _variant(path: Path, of: Path, last_byte: int, uid: str | None = None) -> str:
    """A copy of ``of`` whose last pixel byte is ``last_byte``, and whose SOP Instance UID
    is ``uid``, of the same length, where given (the same study and series); its UID."""
    data = bytearray(of.read_bytes())
    old = pydicom.dcmread(of, stop_before_pixels=True).SOPInstanceUID
    if uid is not None:
        assert len(uid) == len(old)
        data = bytearray(bytes(data).replace(old.encode(), uid.encode()))
    data[-1] = last_byte
    path.write_bytes(data)
    return uid or str(old)


def _dataset_size(path: Path) -> int:
    head = path.read_bytes()[:144]
    return path.stat().st_size - (144 + struct.unpack_from("<L", head, 140)[0])


def _spool_files(server: MimicProcess, spool: Path | None = None) -> list[str]:
    """Spool files the server holds open (anonymous ones included), and any on disk."""
    assert server.proc is not None
    spool = (spool or server.data_dir / "spool").resolve()
    held = [str(p) for p in spool.iterdir()] if spool.exists() else []
    for fd in Path(f"/proc/{server.proc.pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith(str(spool)):
            held.append(target)
    return held


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


# -- C-STORE ----------------------------------------------------------------------------------


@pytest.mark.parametrize("series", ["new series", "known series"])
@pytest.mark.parametrize("failing", ["third block", "commit", "commit's answer"])
def test_an_upload_failing_part_way_is_refused_and_leaves_no_row(
    server: MimicProcess, faults: BlobFaults, blob: Azurite, database: str, tmp_path: Path,
    failing: str, series: str,
) -> None:
    """A 20 MiB object (six blocks) whose third block, or whose commit, the store keeps
    failing, or whose commit's answer is lost each time (committed, yet the put fails):
    0xA700 within the SDK's bounded retries, no index row, no blob; the association
    goes on, and the same object sent again once the store answers is kept whole. In a known
    series the instance is one statement after the put; in a new one the transaction's
    round trips run beside the put."""
    path = tmp_path / "a.dcm"
    uid = _large(path, 20 * MiB)
    if series == "known series":
        first = tmp_path / "first.dcm"
        _variant(first, path, 1, uid=uid[:-1] + ("1" if uid[-1] != "1" else "2"))
        _store(server, first)
    blocks = 0

    def rule(seen: Seen) -> Any:
        nonlocal blocks
        if uid not in seen.path:
            return None
        if seen.stages_a_block:
            blocks += 1
            return ("status", 500) if failing == "third block" and blocks >= 3 else None
        if seen.commits_blocks and failing == "commit":
            return ("status", 500)
        if seen.commits_blocks and failing == "commit's answer":
            return ("lose answer",)
        return None

    faults.rule = rule
    assoc = _assoc(server)
    try:
        started = time.monotonic()
        answer = assoc.send_c_store(path)
        assert answer.Status == 0xA700, answer
        assert time.monotonic() - started < 30
        assert _rows(database, uid) == []
        assert _blobs_of(blob, uid) == []
        assert _spool_files(server) == []
        # tried twice (blob_retries=1), then refused: no block after the failing one
        staged = [s for s in faults.requests() if uid in s.path and s.stages_a_block]
        assert len(staged) == (4 if failing == "third block" else 6), staged

        faults.rule = lambda seen: None
        assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.release()
    _sound(blob, database, uid)


def test_a_put_slower_than_the_network_timeout_keeps_the_association(
    server: MimicProcess, faults: BlobFaults, blob: Azurite, database: str, tmp_path: Path,
) -> None:
    """Each block takes 2.5 s: the put of a 16 MiB object (four blocks) outlasts the
    server's network timeout while the peer waits, silent, for the response. The object is
    kept and the association with it: the peer's next C-STORE is answered too (pynetdicom
    counts the network timeout from the last PDU received only, and aborted the association
    right after the first response)."""
    first, second = tmp_path / "slow-1.dcm", tmp_path / "slow-2.dcm"
    uid1, uid2 = _large(first, 16 * MiB), _large(second, 12 * MiB)
    faults.rule = lambda seen: ("delay", 2.5) if seen.stages_a_block else None
    assoc = _assoc(server)
    try:
        started = time.monotonic()
        assert assoc.send_c_store(first).Status == 0x0000
        assert time.monotonic() - started > NETWORK_TIMEOUT
        faults.rule = lambda seen: None
        time.sleep(0.5)  # the abort, where it comes, comes at once
        assert assoc.is_established
        assert assoc.send_c_store(second).Status == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()
    _sound(blob, database, uid1)
    _sound(blob, database, uid2)


def test_at_the_limit_is_kept_and_one_byte_past_it_refused(
    tmp_path_factory: pytest.TempPathFactory, database: str, faults: BlobFaults,
    blob: Azurite, tmp_path: Path,
) -> None:
    """``MIMIC_MAX_OBJECT_BYTES`` bounds the data set received: one of exactly that size is
    kept; the same size one byte past the limit is refused 0xA700, naming the limit, and
    nothing of it reaches the store (not even a staged block)."""
    at, past = tmp_path / "at.dcm", tmp_path / "past.dcm"
    uid_at = _large(at, 12 * MiB)
    # a UID of the same length: two generated ones may differ by a digit, and so the sizes
    uid_past = _variant(past, at, 1, uid=uid_at[:-1] + ("1" if uid_at[-1] != "1" else "2"))
    size = _dataset_size(at)
    assert _dataset_size(past) == size
    root = tmp_path_factory.mktemp("limits")
    for limit, path, uid in [(size, at, uid_at), (size - 1, past, uid_past)]:
        (root / str(limit)).mkdir()
        process = _archive(root / str(limit), database, faults, max_object_bytes=str(limit))
        try:
            assoc = _assoc(process)
            answer = assoc.send_c_store(path)
            assert assoc.is_established  # the rest was read and dropped: no abort
            assoc.release()
            if limit == size:
                assert answer.Status == 0x0000, answer
                _sound(blob, database, uid)
            else:
                assert answer.Status == 0xA700, answer
                assert "limit" in answer.ErrorComment
                assert _rows(database, uid) == [] and _blobs_of(blob, uid) == []
                assert not [s for s in faults.requests() if uid in s.path]
            assert _spool_files(process) == []
        finally:
            assert process.stop() == 0, process.log()


def test_a_peer_aborting_while_its_blocks_are_staged(
    server: MimicProcess, faults: BlobFaults, blob: Azurite, database: str, tmp_path: Path,
) -> None:
    """The data set had arrived whole (the put begins only then): the peer's A-ABORT while
    its blocks are being staged does not cut the put short. The object is committed and
    indexed, sound; its spool is released."""
    path = tmp_path / "abort.dcm"
    uid = _large(path, 20 * MiB)
    staging = threading.Event()

    def rule(seen: Seen) -> Any:
        if uid in seen.path and seen.stages_a_block:
            staging.set()
            return ("delay", 0.5)
        return None

    faults.rule = rule
    assoc = _assoc(server)

    def send() -> None:
        with contextlib.suppress(Exception):  # the association is aborted under it
            assoc.send_c_store(path)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert staging.wait(30)
    assoc.abort()
    assert wait_for(lambda: len(_rows(database, uid)) == 1, timeout=30)
    _sound(blob, database, uid)
    assert wait_for(lambda: _spool_files(server) == [], timeout=10)


def test_the_same_instance_sent_again_while_its_first_upload_runs(
    server: MimicProcess, faults: BlobFaults, blob: Azurite, database: str, tmp_path: Path,
) -> None:
    """Two versions of one SOP Instance: the first's blocks are slow, the second, sent on
    another association meanwhile, is kept first. Both are answered Success; afterwards one
    row names one blob, whose bytes are that row's, and the other version's blob is gone.
    (Which version that is follows the order of the commits: here the first one sent,
    committed last.)"""
    first, second = tmp_path / "v1.dcm", tmp_path / "v2.dcm"
    uid = _large(first, 16 * MiB)
    _variant(first, first, 1)
    _variant(second, first, 2)
    slow: list[str] = []
    staging = threading.Event()

    def rule(seen: Seen) -> Any:
        if uid in seen.path and seen.stages_a_block:
            if not slow:
                slow.append(seen.path)  # the first version's key
            if seen.path == slow[0]:
                staging.set()
                return ("delay", 1.0)
        return None

    faults.rule = rule
    answers: dict[str, int] = {}
    a1 = _assoc(server)
    t1 = threading.Thread(target=lambda: answers.__setitem__(
        "first", a1.send_c_store(first).Status), daemon=True)
    t1.start()
    assert staging.wait(30)
    a2 = _assoc(server)
    answers["second"] = a2.send_c_store(second).Status
    a2.release()
    t1.join(60)
    a1.release()
    assert answers == {"first": 0x0000, "second": 0x0000}
    kept = _sound(blob, database, uid)
    assert kept[-1] == 1  # committed last


def test_a_spool_that_fills_mid_object(
    tmp_path_factory: pytest.TempPathFactory, database: str, faults: BlobFaults,
    blob: Azurite, tmp_path: Path,
) -> None:
    """``MIMIC_SPOOL_DIR`` on a 14 MiB tmpfs: a 24 MiB data set fills it midway (ENOSPC).
    The C-STORE is answered 0xA700, nothing reaches the store or the index, the spool is
    released, and the association goes on: a 10 MiB object on it is kept."""
    spool = tmp_path_factory.mktemp("small-spool")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=14m", "tmpfs", str(spool)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("no tmpfs can be mounted here (needs root)")
    try:
        process = _archive(tmp_path_factory.mktemp("enospc"), database, faults,
                           spool_dir=str(spool))
        try:
            big, fits = tmp_path / "big.dcm", tmp_path / "fits.dcm"
            uid_big, uid_fits = _large(big, 24 * MiB), _large(fits, 10 * MiB)
            assoc = _assoc(process)
            try:
                answer = assoc.send_c_store(big)
                assert answer.Status == 0xA700, answer
                assert assoc.is_established
                assert _spool_files(process, spool) == []
                assert assoc.send_c_store(fits).Status == 0x0000
            finally:
                assoc.release()
            assert _rows(database, uid_big) == [] and _blobs_of(blob, uid_big) == []
            _sound(blob, database, uid_fits)
        finally:
            assert process.stop() == 0, process.log()
    finally:
        subprocess.run(["umount", str(spool)], check=False)


# -- C-GET / C-MOVE ---------------------------------------------------------------------------


def _identifier(path: Path) -> Dataset:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.PatientID = "LARGE"
    ds.StudyInstanceUID = header.StudyInstanceUID
    ds.SeriesInstanceUID = header.SeriesInstanceUID
    ds.SOPInstanceUID = header.SOPInstanceUID
    return ds


def _get(server: MimicProcess, identifier: Dataset, on_pdu: Any = None,
         on_data: Any = None) -> tuple[dict[str, str], Dataset, Any]:
    """C-GET with pynetdicom: the data set digests received, the final response, the assoc."""
    received: dict[str, str] = {}

    def on_store(event: Any) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = dataset_digest(
            Path(event.dataset_path))
        return 0x0000

    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(GET)
    ae.add_requested_context(SC, [ExplicitVRLittleEndian])
    handlers = [(evt.EVT_C_STORE, on_store)]
    if on_pdu is not None:
        handlers.append((evt.EVT_PDU_RECV, on_pdu))
    if on_data is not None:
        handlers.append((evt.EVT_DATA_RECV, on_data))
    assoc = ae.associate(HOST, server.port, ae_title="MIMIC", tls_args=_tls(server),
                         ext_neg=[build_role(SC, scp_role=True)], evt_handlers=handlers)
    assert assoc.is_established
    final = Dataset()
    for status, _ in assoc.send_c_get(identifier, GET):
        if status and status.Status != 0xFF00:
            final = status
    if assoc.is_established:
        assoc.release()
    return received, final, assoc


@pytest.mark.parametrize("change", ["truncated", "one byte changed"])
def test_a_large_blob_changed_out_of_band_is_never_sent(
    server: MimicProcess, blob: Azurite, database: str, tmp_path: Path, change: str,
) -> None:
    """A 12 MiB object's blob cut by 3 MiB, or one byte changed, by someone else (its
    ``sha256`` metadata kept): the hash pass finds it, the sub-operation fails, and no
    fragment of it is sent."""
    path = tmp_path / "oob.dcm"
    uid = _large(path, 12 * MiB)
    _store(server, path)
    [(key, _, size)] = _rows(database, uid)
    client = _container(blob).get_blob_client(key)
    metadata = client.get_blob_properties().metadata
    data = client.download_blob().readall()
    data = data[: size - 3 * MiB] if change == "truncated" else (
        data[:-1] + bytes([data[-1] ^ 0xFF]))
    client.upload_blob(data, overwrite=True, metadata=metadata)
    pdus = 0

    def count(event: Any) -> None:
        nonlocal pdus
        pdus += 1

    received, final, _ = _get(server, _identifier(path), on_pdu=count)

    assert received == {}
    assert final.Status in (0xA702, 0xB000), final
    assert final.NumberOfFailedSuboperations == 1
    assert pdus < 10, pdus  # the C-GET's responses only: the object is ~100 PDUs


def test_a_large_blob_replaced_while_it_is_sent_is_never_delivered(
    server: MimicProcess, blob: Azurite, database: str, tmp_path: Path,
) -> None:
    """The blob is replaced (one byte changed near its end) after its hash pass, while its
    fragments are on their way: the read that follows fails (the blob is not the one whose
    first range was read), the association is aborted, and the requestor never has the
    object whole."""
    path = tmp_path / "mid.dcm"
    uid = _large(path, 24 * MiB)
    _store(server, path)
    [(key, _, _)] = _rows(database, uid)
    client = _container(blob).get_blob_client(key)
    metadata = client.get_blob_properties().metadata
    data = client.download_blob().readall()
    changed = data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:]
    pdus = 0

    def replace_once_sending(event: Any) -> None:
        nonlocal pdus
        pdus += 1
        if pdus == 3:  # the data set has begun to arrive: its hash pass is behind it
            client.upload_blob(changed, overwrite=True, metadata=metadata)

    mark = server.log_mark()
    received, final, assoc = _get(server, _identifier(path), on_pdu=replace_once_sending)

    assert pdus > 3
    assert received == {}
    assert assoc.is_aborted
    assert not final.get("NumberOfCompletedSuboperations", 0)
    assert wait_for(lambda: any("interrupted" in e.get("message", "")
                                for e in server.log_entries()[mark:]))


def test_a_get_requestor_that_stops_reading(
    server: MimicProcess, database: str, tmp_path: Path,
) -> None:
    """The requestor of a C-GET of a 64 MiB object stops reading once its data set begins:
    the server's memory stays bounded (well under the object), its send ends at the network
    timeout, and it goes on serving: the same object, whole, to the next requestor."""
    path = tmp_path / "stall.dcm"
    uid = _large(path, 64 * MiB)
    _store(server, path)
    gate = threading.Event()

    def stall(event: Any) -> None:  # in the requestor's reading thread
        if len(event.data) > 4096:
            gate.wait(60)

    pid = server.proc.pid  # type: ignore[union-attr]
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to the current RSS
    before = _vm(pid, "VmHWM")
    mark = server.log_mark()
    getter = threading.Thread(target=lambda: _get(server, _identifier(path), on_data=stall),
                              daemon=True)
    started = time.monotonic()
    getter.start()
    try:
        assert wait_for(lambda: any(
            "association ended while its object was being sent" in e.get("message", "")
            for e in server.log_entries()[mark:]), timeout=NETWORK_TIMEOUT * 5)
        assert time.monotonic() - started < NETWORK_TIMEOUT * 3
        assert _vm(pid, "VmHWM") - before < 32 * MiB
    finally:
        gate.set()
    getter.join(60)
    received, final, _ = _get(server, _identifier(path))
    assert final.Status == 0x0000, final
    assert received == {uid: dataset_digest(path)}


def test_a_move_longer_than_the_network_timeout_keeps_both_associations(
    server: MimicProcess, faults: BlobFaults, destination: Destination, tmp_path: Path,
) -> None:
    """Each 2 MiB range of a 16 MiB object is read in 0.5 s: its hash pass and its sending
    together outlast the network timeout, during which the C-MOVE's requestor rightly sends
    nothing, and the destination nothing until its response. The object is delivered, the
    C-MOVE answered Success, and the requestor's association is still there to be released
    (pynetdicom aborted the sub-association for the destination's silence during the hash
    pass, and the requestor's association for its own silence during the move)."""
    path = tmp_path / "move.dcm"
    uid = _large(path, 16 * MiB)
    _store(server, path)
    faults.rule = lambda seen: (
        ("delay", 0.5) if seen.method == "GET" and uid in seen.path else None)
    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(MOVE)
    assoc = ae.associate(HOST, server.port, ae_title="MIMIC", tls_args=_tls(server))
    assert assoc.is_established
    try:
        started = time.monotonic()
        responses = list(assoc.send_c_move(_identifier(path), "PLAIN", MOVE))
        assert time.monotonic() - started > NETWORK_TIMEOUT
        final = responses[-1][0]
        assert final.Status == 0x0000, final
        assert uid in destination.received
        time.sleep(0.5)  # the abort, where it comes, comes at once
        assert assoc.is_established
    finally:
        if assoc.is_established:
            assoc.release()
    assert assoc.is_released
