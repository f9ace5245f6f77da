"""Objects larger than memory should hold: received in bounded memory, and the size limit.

A 256 MiB object (zero pixels, a sparse file) goes in through dcmtk's ``storescu`` over TLS;
the server's peak resident memory (``VmHWM`` of its process, reset first) stays far below
the object's size, and the stored object is the bytes sent. ``MIMIC_MAX_OBJECT_BYTES``
refuses a larger data set with 0xA700 and stores nothing; a peer that keeps sending is
aborted; a transfer cut off midway leaves no spool file open or on disk.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import stat
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom.dimse_primitives import C_STORE

from tests.large_objects import (
    write_large,
    write_large_document,
    write_long_values,
    write_many_elements,
)
from tests.support import MimicProcess, associate, client_context, dcmtk, dcmtk_tls, wait_for

pytestmark = pytest.mark.dcmtk

MiB = 1 << 20
SECONDARY_CAPTURE, EXPLICIT_LE = SecondaryCaptureImageStorage, ExplicitVRLittleEndian
LARGE = 256 * MiB
LIMIT = 32 * MiB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MimicProcess]:
    root = tmp_path_factory.mktemp("large")
    process = MimicProcess(root / "data", workers="1").start()  # /proc: the one process
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MimicProcess]:
    root = tmp_path_factory.mktemp("limited")
    process = MimicProcess(root / "data", max_object_bytes=str(LIMIT), workers="1").start()
    yield process
    assert process.stop() == 0, process.log()


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _spool_files(server: MimicProcess) -> list[str]:
    """Files of the spool directory: on disk, and held open by the server (anonymous)."""
    spool = server.data_dir / "spool"
    on_disk = [p.name for p in spool.iterdir()] if spool.exists() else []
    assert server.proc is not None
    held = []
    fds = Path(f"/proc/{server.proc.pid}/fd")
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(spool.resolve())):
            held.append(target)
    return on_disk + held


def _metric(server: MimicProcess, name: str) -> float:
    status, body = server.ops("/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


def _storescu(server: MimicProcess, path: Path) -> tuple[int, str]:
    result = dcmtk(
        "storescu", "-v", *dcmtk_tls(server), "-aet", "MODALITY1", "-aec", "MIMIC",
        "--max-send-pdu", "131072", "localhost", str(server.port), str(path), timeout=300,
    )
    return result.returncode, result.stderr + result.stdout


def test_large_object_in_bounded_memory(server: MimicProcess, tmp_path: Path) -> None:
    path = tmp_path / "large.dcm"
    uid = write_large(path, LARGE)
    assert server.proc is not None
    pid = server.proc.pid
    _reset_peak(pid)
    before = _status(pid, "VmHWM")

    code, output = _storescu(server, path)

    assert code == 0, output
    assert "Received Store Response (Success)" in output
    peak = _status(pid, "VmHWM")
    # A memory bound, not a timing: the whole object would add 256 MiB.
    assert peak - before < LARGE // 4, (before, peak)
    stored = server.object_for(uid)
    sent = path.read_bytes()
    offset = 132 + struct.unpack_from("<L", sent, 140)[0] + 12
    kept = stored.read_bytes()
    kept_offset = 132 + struct.unpack_from("<L", kept, 140)[0] + 12
    assert kept[kept_offset:] == sent[offset:]
    assert _spool_files(server) == []
    # Its spool file was named into place (not copied), with the mode of any file the
    # server creates.
    assert wait_for(lambda: _metric(server, "mimic_spooled_objects_named_total") >= 1)
    assert _metric(server, "mimic_spooled_objects_copied_total") == 0
    umask = next(int(line.split()[1], 8) for line in
                 Path("/proc/self/status").read_text().splitlines() if line.startswith("Umask:"))
    assert stat.S_IMODE(stored.stat().st_mode) == 0o666 & ~umask
    assert stored.stat().st_nlink == 1


def test_a_spool_on_another_file_system_is_copied(tmp_path: Path) -> None:
    """``MIMIC_SPOOL_DIR`` on tmpfs, the objects on disk: the spool cannot be named there
    (EXDEV), so it is copied whole, counted and said once at INFO."""
    spool = Path(tempfile.mkdtemp(prefix="mimic-spool-", dir="/dev/shm"))
    server = MimicProcess(tmp_path / "data", workers="1", spool_dir=str(spool)).start()
    try:
        assert os.stat(spool).st_dev != os.stat(server.data_dir).st_dev
        path = tmp_path / "large.dcm"
        uid = write_large(path, 24 * MiB)
        for _ in range(2):
            code, output = _storescu(server, path)
            assert code == 0, output
            assert "Received Store Response (Success)" in output
        sent = path.read_bytes()
        kept = server.object_for(uid).read_bytes()
        offset = 132 + struct.unpack_from("<L", sent, 140)[0] + 12
        kept_offset = 132 + struct.unpack_from("<L", kept, 140)[0] + 12
        assert kept[kept_offset:] == sent[offset:]
        assert wait_for(lambda: _metric(server, "mimic_spooled_objects_copied_total") == 2)
        assert _metric(server, "mimic_spooled_objects_named_total") == 0
        said = [line for line in server.log().splitlines()
                if "copied from their spool" in line]
        assert len(said) == 1 and '"level": "INFO"' in said[0], said
        assert list(spool.iterdir()) == []
    finally:
        assert server.stop() == 0, server.log()
        shutil.rmtree(spool, ignore_errors=True)


def test_a_large_document_in_the_header_in_bounded_memory(
    server: MimicProcess, tmp_path: Path
) -> None:
    """An Encapsulated PDF has no Pixel Data: its document is the header's last element,
    which the header read must not copy (bulk data, left out of the index's JSON)."""
    path = tmp_path / "document.dcm"
    uid = write_large_document(path, 96 * MiB)
    assert server.proc is not None
    _reset_peak(server.proc.pid)
    before = _status(server.proc.pid, "VmHWM")

    code, output = _storescu(server, path)

    assert code == 0, output
    assert "Received Store Response (Success)" in output
    assert _status(server.proc.pid, "VmHWM") - before < 32 * MiB
    assert server.object_for(uid).stat().st_size > 96 * MiB


@pytest.mark.parametrize("header", ["many elements", "many bytes"])
def test_a_header_past_its_bounds_is_refused(
    server: MimicProcess, tmp_path: Path, header: str
) -> None:
    """Each header element costs the index's JSON some hundreds of bytes, and an element
    can be 8: past MAX_HEADER_ELEMENTS, or past MAX_HEADER_BYTES of values kept (9,000 of
    1 KiB), the C-STORE is refused 0xA700, nothing stored."""
    path = tmp_path / "many.dcm"
    if header == "many elements":
        write_many_elements(path, 60_000)
    else:
        write_long_values(path, 9_000, 1024)
    before, objects_before = server.instance_count(), len(server.stored_objects())

    _code, output = _storescu(server, path)

    assert "Received Store Response (Refused: OutOfResources)" in output, output
    assert (server.instance_count(), len(server.stored_objects())) == (before, objects_before)
    assert _spool_files(server) == []


def test_a_header_of_long_values_in_bounded_memory(
    server: MimicProcess, tmp_path: Path
) -> None:
    """A thousand 64 KiB texts (a 64 MiB header) and a sequence of undefined length: values
    over 1 KiB are copied while they total 1 MiB, the rest left in the object (bulk data);
    the header was copied whole and its text put in the index's JSON."""
    path = tmp_path / "long-values.dcm"
    uid = write_long_values(path, 1000, 64 * 1024)
    assert server.proc is not None
    pid = server.proc.pid
    before = _status(pid, "RssAnon")
    peak = [before]
    done = threading.Event()

    def sample() -> None:  # the peak of anonymous memory: RssAnon has no high-water mark
        while not done.wait(0.005):
            peak[0] = max(peak[0], _status(pid, "RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        code, output = _storescu(server, path)
    finally:
        done.set()
        sampler.join()

    assert code == 0, output
    assert "Received Store Response (Success)" in output
    # Not VmHWM: the header is read from the spool file through a map, and the kernel maps
    # the cached pages around each element read (file pages, page cache, not the server's).
    assert peak[0] - before < 32 * MiB, f"{(peak[0] - before) / MiB:.0f} MiB"
    assert server.object_for(uid).stat().st_size > 1000 * 64 * 1024


def test_a_long_specific_character_set_is_refused(server: MimicProcess, tmp_path: Path) -> None:
    """pydicom reads a Specific Character Set whole and makes a codec of each value: one
    over 1 KiB is refused 0xC000 with an Error Comment, nothing stored; the association
    goes on."""
    path = tmp_path / "charset.dcm"
    write_many_elements(path, 0)
    raw = path.read_bytes()
    meta_end = 132 + 12 + struct.unpack_from("<L", raw, 140)[0]
    charset = b"\\".join([b"ISO_IR 100"] * 100)  # 1,099 bytes
    charset += b" " * (len(charset) % 2)
    path.write_bytes(raw[:meta_end] + struct.pack("<HH2sH", 0x0008, 0x0005, b"CS",
                                                   len(charset)) + charset + raw[meta_end:])
    before, objects_before = server.instance_count(), len(server.stored_objects())
    assoc = associate(
        server.port, client_context(server.client_cert, server.client_key, server.ca_cert),
        contexts=["1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.1"],
        transfer_syntaxes=["1.2.840.10008.1.2.1"],
    )
    assert assoc.is_established
    try:
        answer = assoc.send_c_store(path)
        echo = assoc.send_c_echo()
    finally:
        assoc.release()
    assert answer.Status == 0xC000, hex(answer.Status)
    assert "Specific Character Set" in answer.ErrorComment
    assert echo.Status == 0x0000
    assert (server.instance_count(), len(server.stored_objects())) == (before, objects_before)
    assert _spool_files(server) == []


def test_a_large_object_refused_after_its_header_is_read_holds_no_spool(
    server: MimicProcess, tmp_path: Path,
) -> None:
    """A spooled data set whose SOP Instance UID differs from the command's (0xC001):
    nothing stored, and neither its spool nor the map its header was read through is held
    once the C-STORE is answered."""
    path = tmp_path / "mismatch.dcm"
    uid = write_large(path, 24 * MiB)
    raw = bytearray(path.read_bytes())
    meta_end = 132 + 12 + struct.unpack_from("<L", raw, 140)[0]
    at = raw.index(uid.encode(), meta_end)  # the data set's, not the File Meta's
    raw[at + len(uid) - 1] = ord("8") if raw[at + len(uid) - 1] != ord("8") else ord("7")
    path.write_bytes(raw)
    before, objects_before = server.instance_count(), len(server.stored_objects())
    assoc = associate(
        server.port, client_context(server.client_cert, server.client_key, server.ca_cert),
        contexts=["1.2.840.10008.5.1.4.1.1.7"], transfer_syntaxes=["1.2.840.10008.1.2.1"],
    )
    assert assoc.is_established
    try:
        answer = assoc.send_c_store(path)
        assert answer.Status == 0xC001, hex(answer.Status)
        assert _spool_files(server) == []  # while the association is still up
    finally:
        assoc.release()
    assert (server.instance_count(), len(server.stored_objects())) == (before, objects_before)


def test_larger_than_the_limit_is_refused(limited: MimicProcess, tmp_path: Path) -> None:
    path = tmp_path / "over.dcm"
    write_large(path, LIMIT + 8 * MiB)
    before = limited.instance_count()

    code, output = _storescu(limited, path)

    assert code != 0
    assert "Received Store Response (Refused: OutOfResources)" in output, output  # 0xA700
    assert any(
        e.get("message") == "C-STORE refused" and e.get("status") == "0xA700"
        and "limit" in e.get("reason", "") for e in limited.log_entries()
    )
    assert limited.instance_count() == before
    assert limited.stored_objects() == []
    assert _spool_files(limited) == []


def test_peer_that_keeps_sending_is_aborted(limited: MimicProcess, tmp_path: Path) -> None:
    path = tmp_path / "far-over.dcm"
    write_large(path, LIMIT * 4)
    before = limited.instance_count()

    code, output = _storescu(limited, path)

    assert code != 0
    assert "Store Response" not in output, output
    assert wait_for(lambda: any(
        "keeps sending" in e.get("message", "") for e in limited.log_entries()
    ))
    assert limited.instance_count() == before
    assert limited.stored_objects() == []
    assert wait_for(lambda: _spool_files(limited) == [])


def test_transfer_cut_off_leaves_no_spool_file(server: MimicProcess, tmp_path: Path) -> None:
    """A peer killed midway through a spooled data set: its spool file is released."""
    path = tmp_path / "cut.dcm"
    write_large(path, 120 * MiB)
    before = server.instance_count()
    env = {**os.environ, "TCP_NODELAY": "1"}
    peer = subprocess.Popen(
        ["storescu", *dcmtk_tls(server), "-aet", "MODALITY1", "-aec", "MIMIC",
         "--max-send-pdu", "16384", "localhost", str(server.port), str(path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: len(_spool_files(server)) == 1, interval=0.005), (
            "no spool file was made"
        )
    finally:
        peer.kill()
        peer.wait()
    assert wait_for(lambda: _spool_files(server) == [])
    assert server.instance_count() == before


def test_command_set_that_never_ends_is_aborted(server: MimicProcess) -> None:
    """Command fragments never marked last: past 64 KiB the association is aborted, and
    what was sent is not held (a real command set is a few hundred bytes)."""
    assert server.proc is not None
    tls = client_context(server.client_cert, server.client_key, server.ca_cert)
    assoc = associate(server.port, tls)
    assert assoc.is_established
    context_id = next(iter(assoc._accepted_cx))
    sock = assoc.dul.socket.socket  # type: ignore[union-attr]
    payload = bytes(128 * 1024)
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, 0x01) + payload  # not the last
    pdu = struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv
    _reset_peak(server.proc.pid)
    before = _status(server.proc.pid, "VmHWM")
    sent = 0
    try:
        while sent < 64 * MiB:
            sock.sendall(pdu)
            sent += len(payload)
    except OSError:
        pass  # aborted by the server
    finally:
        sock.close()
        assoc.dul.kill_dul()
    assert sent < 64 * MiB, "the server kept reading an endless command set"
    assert wait_for(lambda: any(
        "command set exceeds" in e.get("message", "") for e in server.log_entries()))
    assert _status(server.proc.pid, "VmHWM") - before < 32 * MiB
    echo = dcmtk("echoscu", *dcmtk_tls(server), "-aet", "MODALITY1", "-aec", "MIMIC",
                 "localhost", str(server.port))
    assert echo.returncode == 0, echo.stderr


def test_a_peer_that_does_not_wait_for_responses_is_aborted(server: MimicProcess) -> None:
    """Five 12 MiB C-STOREs sent at once, while the index is busy with the first: one more
    may wait beside it, the next aborts the association, and every spool file is released
    as the association ends (the waiting request's too), none left to the collector."""
    tls = client_context(server.client_cert, server.client_key, server.ca_cert)
    assoc = associate(server.port, tls, contexts=[SECONDARY_CAPTURE],
                      transfer_syntaxes=[EXPLICIT_LE])
    assert assoc.is_established
    context = next(iter(assoc._accepted_cx))
    before = server.instance_count()
    index = sqlite3.connect(server.data_dir / "index.sqlite3", timeout=30)
    index.execute("BEGIN IMMEDIATE")  # the first C-STORE's index write waits
    most = 0
    try:
        for message_id in range(1, 6):
            request = C_STORE()
            request.MessageID, request.Priority = message_id, 0
            request.AffectedSOPClassUID = SECONDARY_CAPTURE
            request.AffectedSOPInstanceUID = uid = generate_uid()
            request.DataSet = io.BytesIO(_secondary_capture(uid, 12 * MiB))
            if not assoc.is_established:
                break
            assoc.dimse.send_msg(request, context)  # without waiting for its response
            most = max(most, len(set(_spool_files(server))))
        assert wait_for(lambda: assoc.is_aborted, timeout=30)
        most = max(most, len(set(_spool_files(server))))
        assert any("waits for its turn" in e.get("message", "") for e in server.log_entries())
    finally:
        index.rollback()
        index.close()
    # Distinct spool files (a put holds a second descriptor of its spool while it names it):
    assert most <= 2, most  # the one being handled and one waiting, never more
    assert wait_for(lambda: _spool_files(server) == [], timeout=5)
    assert server.instance_count() <= before + 1  # only the one being handled, unanswered


def _secondary_capture(uid: str, pixels: int) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.901"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.902"
    ds.PatientID, ds.Modality = "PIPELINED", "OT"
    ds.PixelData = bytes(pixels)
    ds["PixelData"].VR = "OB"
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()
