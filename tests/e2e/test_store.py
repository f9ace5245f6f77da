"""C-ECHO and C-STORE over mutual TLS against a real ``mimic serve`` process.

The peers are real: pynetdicom sending each file's dataset bytes as they are on disk, and
dcmtk's ``echoscu`` / ``storescu``. What arrives must be byte-identical to what was sent.
"""

from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import UID

from tests.data import Storable, ct_small, storable_files
from tests.support import MimicProcess, associate, client_context, dcmtk, dcmtk_tls


def _tls(server: MimicProcess):  # type: ignore[no-untyped-def]
    return client_context(server.client_cert, server.client_key, server.ca_cert)


def _stored_dataset(server: MimicProcess, item: Storable) -> bytes:
    stored = server.object_for(item.sop_instance_uid).read_bytes()
    meta = pydicom.dcmread(server.object_for(item.sop_instance_uid), stop_before_pixels=True)
    assert meta.file_meta.TransferSyntaxUID == item.transfer_syntax_uid
    assert meta.file_meta.MediaStorageSOPInstanceUID == item.sop_instance_uid
    start = stored.index(b"DICM") + 4
    group_length = int.from_bytes(stored[start + 8 : start + 12], "little")
    return stored[start + 12 + group_length :]


def test_echo_with_pynetdicom(server: MimicProcess) -> None:
    assoc = associate(server.port, _tls(server))
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == 0x0000


def test_echo_with_dcmtk(server: MimicProcess) -> None:
    result = dcmtk(
        "echoscu", "-v", *dcmtk_tls(server), "-aet", "MODALITY1", "-aec", "MIMIC",
        "localhost", str(server.port),
    )
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr + result.stdout


def test_every_storable_pydicom_file_arrives_byte_identical(server: MimicProcess) -> None:
    files = storable_files()
    assert len(files) >= 40, "pydicom / pydicom-data test files are missing"
    before = server.instance_count()
    # One association per transfer syntax, as a modality would propose what it holds.
    by_syntax: dict[str, list[Storable]] = {}
    for item in files:
        by_syntax.setdefault(item.transfer_syntax_uid, []).append(item)
    for syntax, items in by_syntax.items():
        classes = sorted({i.sop_class_uid for i in items})
        assoc = associate(
            server.port, _tls(server), contexts=classes, transfer_syntaxes=[syntax]
        )
        assert assoc.is_established, UID(syntax).name
        for item in items:
            status = assoc.send_c_store(item.path)
            assert status.Status == 0x0000, (item.path.name, hex(status.Status))
        assoc.release()
    assert server.instance_count() == before + len(files)
    for item in files:
        assert _stored_dataset(server, item) == item.dataset_bytes(), item.path.name


def test_storescu_over_tls(server: MimicProcess) -> None:
    path = ct_small()
    result = dcmtk(
        "storescu", "-v", *dcmtk_tls(server), "-aet", "MODALITY1", "-aec", "MIMIC",
        "localhost", str(server.port), str(path),
    )
    assert result.returncode == 0, result.stderr
    assert "Received Store Response (Success)" in result.stderr + result.stdout
    stored = pydicom.dcmread(server.object_for(pydicom.dcmread(path).SOPInstanceUID))
    original = pydicom.dcmread(path)
    assert stored.PixelData == original.PixelData
    assert stored.PatientName == original.PatientName


@pytest.mark.parametrize(
    ("syntax", "propose"),
    [("1.2.840.10008.1.2.4.70", "-xs"), ("1.2.840.10008.1.2.4.90", "-xv")],
)
def test_storescu_compressed_syntaxes(server: MimicProcess, syntax: str, propose: str) -> None:
    """A compressed file (JPEG Lossless, JPEG 2000) arrives as it is, bytes unchanged.

    storescu must be told to propose the compressed syntax (``-xs``, ``-xv``); by default it
    offers uncompressed syntaxes only and fails to convert (the same against storescp +xa).
    """
    jpeg = [f for f in storable_files() if f.transfer_syntax_uid == syntax]
    assert jpeg
    args = ["-R", propose]
    result = dcmtk(
        "storescu", "-v", *args, *dcmtk_tls(server), "-aet", "MODALITY1", "-aec", "MIMIC",
        "localhost", str(server.port), str(jpeg[0].path),
    )
    assert result.returncode == 0, result.stderr
    # dcmtk re-encodes the dataset it sends (so the byte-exact check is pynetdicom's test
    # above); the compressed pixel data and the transfer syntax must be untouched.
    stored = pydicom.dcmread(server.object_for(jpeg[0].sop_instance_uid))
    original = pydicom.dcmread(jpeg[0].path)
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert stored.PixelData == original.PixelData


def test_same_sop_instance_twice_keeps_one_instance_with_newest_bytes(
    server: MimicProcess, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    original = pydicom.dcmread(ct_small())
    original.SOPInstanceUID = original.file_meta.MediaStorageSOPInstanceUID = (
        "1.2.826.0.1.3680043.8.498.1001"
    )
    first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
    original.save_as(first, enforce_file_format=True)
    original.StudyDescription = "SECOND VERSION"
    original.save_as(second, enforce_file_format=True)

    before, objects_before = server.instance_count(), len(server.stored_objects())
    syntax = str(original.file_meta.TransferSyntaxUID)
    assoc = associate(server.port, _tls(server), transfer_syntaxes=[syntax])
    assert assoc.send_c_store(first).Status == 0x0000
    first_key = server.object_for(original.SOPInstanceUID)
    assert assoc.send_c_store(second).Status == 0x0000
    assoc.release()

    assert server.instance_count() == before + 1
    assert len(server.stored_objects()) == objects_before + 1  # the old object was removed
    newest = server.object_for(original.SOPInstanceUID)
    assert newest != first_key and not first_key.exists()
    assert pydicom.dcmread(newest).StudyDescription == "SECOND VERSION"


def test_peer_abort_mid_transfer_leaves_nothing(server: MimicProcess) -> None:
    """An A-ABORT in the middle of a C-STORE's data leaves no instance, object or spool."""
    import socket
    import ssl
    import struct

    from pynetdicom.pdu import A_ABORT_RQ

    item = next(f for f in storable_files() if f.path.stat().st_size > 500_000)
    assoc = associate(server.port, _tls(server), contexts=[item.sop_class_uid],
                      transfer_syntaxes=[item.transfer_syntax_uid])
    assert assoc.is_established
    before, objects_before = server.instance_count(), len(server.stored_objects())
    sock: ssl.SSLSocket = assoc.dul.socket.socket  # type: ignore[union-attr, assignment]
    context_id = next(iter(assoc._accepted_cx))
    # A C-STORE-RQ command, then one fragment of the dataset, then A-ABORT.
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    cmd = Dataset()
    cmd.AffectedSOPClassUID = item.sop_class_uid
    cmd.CommandField = 0x0001
    cmd.MessageID = 7
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = item.sop_instance_uid
    raw = encode(cmd, True, True)
    length = len(raw) + 12
    cmd.CommandGroupLength = len(raw)
    raw = encode(cmd, True, True)
    assert length

    def pdata(control: int, payload: bytes) -> bytes:
        pdv = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
        return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv

    sock.sendall(pdata(0x03, raw))
    sock.sendall(pdata(0x00, item.dataset_bytes()[:60000]))
    abort = A_ABORT_RQ()
    abort.source = 0x00
    abort.reason_diagnostic = 0x00
    sock.sendall(abort.encode())
    sock.close()
    assoc.dul.kill_dul()
    # The server must stay healthy and have stored nothing.
    probe = associate(server.port, _tls(server))
    assert probe.is_established and probe.send_c_echo().Status == 0
    probe.release()
    assert server.instance_count() == before
    assert len(server.stored_objects()) == objects_before
    # Nothing half-written either: only the store's empty spare files may wait there.
    incoming = server.data_dir / "objects" / ".incoming"
    assert all(p.stat().st_size == 0 for p in incoming.rglob("*") if p.is_file())
    _ = socket  # imported for the type of the raw socket above


def test_no_patient_data_in_the_log(server: MimicProcess) -> None:
    """After everything above was stored, the log names no patient, study or instance."""
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    log = server.log()
    assert "association closed" in log
    for value in (str(ds.PatientName), str(ds.PatientID), ds.StudyInstanceUID, ds.SOPInstanceUID):
        assert value and value not in log, value
    # The audit trail is where they belong (the table on PostgreSQL, else the file).
    if server.database_url.startswith("sqlite"):
        audit = (server.data_dir / "audit.jsonl").read_text()
    else:
        audit = "\n".join(row[0] for row in server._query("SELECT xml FROM audit_events"))
    assert ds.StudyInstanceUID in audit
