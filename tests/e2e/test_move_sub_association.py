"""A C-MOVE's sub-association keeps its C-STORE responses (``mimic_server/net/requestor.py``).

The archive runs in this process, so the sub-association it opens to a dcmtk ``storescp``
can be looked at: the guard is applied by the archive itself, as the sub-association is
established and before its association thread starts (the deterministic race is in
``tests/unit/test_requestor_responses.py``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove as MOVE,
)

from mimic_server.app import Archive
from mimic_server.config import Settings
from mimic_server.net import requestor
from tests.data import ct_small
from tests.support import HOST, associate, first_client_context, free_port, terminate, wait_for


@pytest.fixture()
def storescp(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    process = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    yield port
    terminate(process)


def test_the_archive_guards_its_sub_association_before_it_starts(
    tmp_path: Path, storescp: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    guarded: list[tuple[bool, bool, type]] = []
    keep = requestor.keep_responses

    def spy(assoc: Any) -> None:
        running = assoc.is_alive()
        keep(assoc)
        # Looked at here: once started, the suite's own guard (conftest) would apply it too.
        guarded.append((assoc.is_requestor, running, type(assoc.dimse)))

    monkeypatch.setattr(requestor, "keep_responses", spy)
    archive = _archive(tmp_path, "STORESCP", storescp)
    settings = archive.settings
    try:
        ctx = first_client_context(settings.data_dir)
        store = associate(archive.address[1], ctx, transfer_syntaxes=["1.2.840.10008.1.2.1"])
        assert store.send_c_store(ct_small()).Status == 0
        store.release()
        assert wait_for(lambda: _accepts(storescp))

        responses = _moved(archive, ctx, pydicom.dcmread(ct_small()).StudyInstanceUID,
                           "STORESCP")
    finally:
        archive.stop(0)

    final = responses[-1]
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 1
    [(is_requestor, was_running, provider)] = guarded
    assert is_requestor and not was_running
    assert provider is requestor._GuardedDIMSE


def _archive(tmp_path: Path, destination: str, port: int, **settings: Any) -> Archive:
    """An archive, started, that knows ``destination`` at ``port`` (plain TCP)."""
    archive = Archive(Settings(
        data_dir=tmp_path / "data", host=HOST, port=0, ops_port=0,
        move_destinations={destination: {"host": HOST, "port": port, "tls": False}},
        **settings))
    archive.start()
    return archive


def _moved(archive: Archive, ctx: Any, study: str, destination: str,
           release: bool = True, msg_id: int = 1) -> list[Any]:
    """Every response to a C-MOVE of ``study`` to ``destination`` (Message ID ``msg_id``,
    requested by ``MODALITY1``), the Failed SOP Instance UID List of its Identifier copied
    onto it; then the release, or (``release=False``) an A-ABORT: only the responses are
    looked at."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", study
    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(MOVE)
    assoc = ae.associate(HOST, archive.address[1], ae_title="MIMIC", tls_args=(ctx, "localhost"))
    responses = []
    for status, answer in assoc.send_c_move(identifier, destination, MOVE, msg_id=msg_id):
        if answer is not None and "FailedSOPInstanceUIDList" in answer:
            status.FailedSOPInstanceUIDList = answer.FailedSOPInstanceUIDList
        responses.append(status)
    if release:
        assoc.release()
    else:
        assoc.abort()
    return responses


def test_sub_operations_name_the_requestor_as_their_move_originator(tmp_path: Path) -> None:
    """PS3.7 9.1.1.1 / Table 9.3-1: a C-STORE sub-operation's Move Originator Application
    Entity Title is the AE that invoked the C-MOVE (here MODALITY1) and its Move Originator
    Message ID that C-MOVE's Message ID, for an object held whole and for one streamed from
    the store (above 8 MiB). pynetdicom named the archive itself (MIMIC)."""
    from pynetdicom import evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        CTImageStorage,
        SecondaryCaptureImageStorage,
    )

    from mimic_server.archive.read import STREAM_ABOVE
    from mimic_server.dimse import stream_send
    from tests.large_objects import write_large

    explicit_le = "1.2.840.10008.1.2.1"
    received: dict[str, tuple[str | None, int | None, str]] = {}

    def on_store(event: Any) -> int:
        request = event.request
        received[str(request.AffectedSOPInstanceUID)] = (
            request.MoveOriginatorApplicationEntityTitle, request.MoveOriginatorMessageID,
            event.assoc.requestor.ae_title)
        return 0

    destination = AE(ae_title="ORIGINS")
    for sop_class in (CTImageStorage, SecondaryCaptureImageStorage):
        destination.add_supported_context(sop_class, [explicit_le])
    port = free_port()
    scp = destination.start_server((HOST, port), block=False,
                                   evt_handlers=[(evt.EVT_C_STORE, on_store)])
    archive = _archive(tmp_path, "ORIGINS", port)
    try:
        ctx = first_client_context(archive.settings.data_dir)
        large = tmp_path / "large.dcm"
        large_uid = write_large(large, STREAM_ABOVE + (4 << 20))
        for path in (ct_small(), large):
            store = associate(archive.address[1], ctx,
                              contexts=[CTImageStorage, SecondaryCaptureImageStorage],
                              transfer_syntaxes=[explicit_le])
            assert store.send_c_store(path).Status == 0
            store.release()
        assert stream_send.enabled  # the large one goes by the streamed send
        finals = [
            _moved(archive, ctx, pydicom.dcmread(path, stop_before_pixels=True)
                   .StudyInstanceUID, "ORIGINS", msg_id=msg_id)[-1]
            for path, msg_id in ((ct_small(), 4242), (large, 517))
        ]
    finally:
        archive.stop(0)
        scp.shutdown()
    assert [final.Status for final in finals] == [0x0000, 0x0000]
    small_uid = str(pydicom.dcmread(ct_small(), stop_before_pixels=True).SOPInstanceUID)
    assert received == {
        small_uid: ("MODALITY1", 4242, archive.settings.ae_title),
        large_uid: ("MODALITY1", 517, archive.settings.ae_title),
    }


def _accepts(port: int) -> bool:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(HOST, port, ae_title="STORESCP")
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def test_a_study_held_in_both_byte_orders_reaches_a_destination_that_takes_both(
    tmp_path: Path,
) -> None:
    """A sub-operation converts between little endian syntaxes only: Explicit VR Big Endian
    is proposed in a context of its own, so a destination that accepts both byte orders
    gets both objects (proposed together, it accepted one syntax for both, and the other
    object failed: 0xB000)."""
    from pydicom.uid import UID
    from pynetdicom import evt
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    explicit_le, big_endian = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"
    study = "1.2.826.0.1.3680043.8.498.7771"
    received: list[tuple[str, str]] = []

    def on_store(event: Any) -> int:
        received.append((str(event.request.AffectedSOPInstanceUID),
                         str(event.context.transfer_syntax)))
        return 0

    destination = AE(ae_title="BOTH")
    destination.add_supported_context(CTImageStorage, [explicit_le, big_endian])
    port = free_port()
    scp = destination.start_server((HOST, port), block=False,
                                   evt_handlers=[(evt.EVT_C_STORE, on_store)])
    archive = _archive(tmp_path, "BOTH", port)
    settings = archive.settings
    try:
        ctx = first_client_context(settings.data_dir)
        for n, syntax in enumerate((explicit_le, big_endian)):
            ds = pydicom.dcmread(ct_small())
            ds.file_meta.TransferSyntaxUID = UID(syntax)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, f"{study}.1"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{study}.1.{n}"
            path = tmp_path / f"{n}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True, implicit_vr=False,
                             little_endian=syntax == explicit_le)
            store = associate(archive.address[1], ctx, transfer_syntaxes=[syntax])
            assert store.send_c_store(path).Status == 0
            store.release()
        responses = _moved(archive, ctx, study, "BOTH")
    finally:
        archive.stop(0)
        scp.shutdown()
    final = responses[-1]
    assert final.Status == 0x0000, hex(final.Status)
    assert final.NumberOfCompletedSuboperations == 2
    assert sorted(received) == [(f"{study}.1.0", explicit_le), (f"{study}.1.1", big_endian)]


def test_a_destination_that_stops_reading_ends_its_sub_association(tmp_path: Path) -> None:
    """A destination accepts, then stops reading in the middle of a 64 MiB object: its
    sends stall once loopback's buffers are full. After the network timeout the
    sub-association ends, the C-MOVE is answered (its sub-operation failed) and no
    connection to the destination is left. (pynetdicom cleared the socket's timeout once
    connected: no answer ever came, a C-CANCEL was never seen, and the connection stayed
    after the requestor aborted.)"""
    import threading

    from pynetdicom import evt
    from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]

    from tests.large_objects import write_large

    gate = threading.Event()
    destination = AE(ae_title="STALLS")
    destination.add_supported_context(SecondaryCaptureImageStorage, ["1.2.840.10008.1.2.1"])
    port = free_port()
    scp = destination.start_server((HOST, port), block=False, evt_handlers=[
        # in the destination's reading thread: it stops reading at the first data set PDU
        (evt.EVT_DATA_RECV, lambda event: len(event.data) > 4096 and gate.wait(60)),
        (evt.EVT_C_STORE, lambda event: 0),
    ])
    archive = _archive(tmp_path, "STALLS", port, network_timeout=2)
    settings = archive.settings
    try:
        ctx = first_client_context(settings.data_dir)
        path = tmp_path / "large.dcm"
        write_large(path, 64 << 20)
        store = associate(archive.address[1], ctx, contexts=[SecondaryCaptureImageStorage],
                          transfer_syntaxes=["1.2.840.10008.1.2.1"])
        assert store.send_c_store(path).Status == 0
        store.release()
        study = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
        responses: list[Any] = []
        moving = threading.Thread(
            target=lambda: responses.extend(_moved(archive, ctx, study, "STALLS", False)),
            daemon=True)
        moving.start()
        moving.join(45)
        assert not moving.is_alive(), "no final C-MOVE response"
        final = responses[-1]
        assert final.Status == 0xA702, hex(final.Status)
        assert final.NumberOfFailedSuboperations == 1
        assert wait_for(lambda: _connections_to(port) == 0, timeout=10)
    finally:
        gate.set()
        archive.stop(0)
        scp.shutdown()


def _connections_to(port: int) -> int:
    """Established TCP connections to ``port`` on this machine (IPv4)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows
               if row.split()[2].endswith(f":{port:04X}") and row.split()[3] == "01")
