"""The association a retrieve's C-STORE sub-operations go over ends (a C-MOVE destination
aborts its sub-association, a C-GET requestor aborts): each remaining sub-operation fails
without its object being read, with the statuses a failed sub-operation has, and the end is
logged once. (Every remaining object was read and SHA-256-hashed in full, then logged at
WARNING as lacking a presentation context: four objects of 48 MiB to a destination that
aborted at the first, 240 MiB read.)

The archive runs in this process, so its reads of the store can be counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
)

from mimic_server.app import Archive
from mimic_server.dimse import retrieve
from mimic_server.query.finder import InstanceRef
from tests.data import ct_small
from tests.e2e.test_move_sub_association import _archive, _moved
from tests.support import HOST, associate, first_client_context, free_port, wait_for

EXPLICIT = "1.2.840.10008.1.2.1"
STUDY = "1.2.826.0.1.3680043.8.498.7772"
COUNT = 4
ENDED = "C-STORE sub-operations not sent: their association ended"
NO_CONTEXT = "C-STORE sub-operation not sent: no presentation context for it"


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SOP Instance UID of each object the archive reads from its store to send."""
    seen: list[str] = []
    read = retrieve.read_verified

    def counted(store: Any, ref: InstanceRef, current: Any = None) -> Any:
        seen.append(ref.sop_instance_uid)
        return read(store, ref, current)

    monkeypatch.setattr(retrieve, "read_verified", counted)
    return seen


def _store_study(archive: Archive, tmp_path: Path) -> list[str]:
    """``COUNT`` CT objects (held whole, read in turn: no read-ahead) in one study."""
    ctx = first_client_context(archive.settings.data_dir)
    store = associate(archive.address[1], ctx, transfer_syntaxes=[EXPLICIT])
    uids = []
    for n in range(COUNT):
        ds = pydicom.dcmread(ct_small())
        ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, f"{STUDY}.1"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{STUDY}.1.{n}"
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert store.send_c_store(path).Status == 0
        uids.append(str(ds.SOPInstanceUID))
    store.release()
    return uids


def _aborting(event: Any) -> int:
    """An EVT_C_STORE handler that aborts its association instead of answering."""
    event.assoc.abort()
    return 0xA700


def _aborting_get(event: Any) -> int:
    """``_aborting`` in a C-GET requestor: its own ``send_c_get`` waiting for the next
    response is woken as pynetdicom wakes it for a peer's abort (``fsm.AA_3``), rather than
    after its DIMSE timeout."""
    status = _aborting(event)
    event.assoc.dimse.msg_queue.put((None, None))
    return status


def _logged(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


@pytest.fixture
def aborting_destination() -> Iterator[int]:
    """A Move Destination ``ABORTS`` that aborts its association at the first C-STORE."""
    destination = AE(ae_title="ABORTS")
    destination.add_supported_context(CTImageStorage, [EXPLICIT])
    port = free_port()
    scp = destination.start_server((HOST, port), block=False,
                                   evt_handlers=[(evt.EVT_C_STORE, _aborting)])
    yield port
    scp.shutdown()


def test_a_destination_that_aborts_fails_the_rest_of_the_move_unread(
    tmp_path: Path, aborting_destination: int, reads: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mimic_server")
    archive = _archive(tmp_path, "ABORTS", aborting_destination)
    try:
        uids = _store_study(archive, tmp_path)
        ctx = first_client_context(archive.settings.data_dir)
        responses = _moved(archive, ctx, STUDY, "ABORTS")
    finally:
        archive.stop(0)
    final = responses[-1]
    assert final.Status == 0xA702, hex(final.Status)
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0, 4)
    assert sorted(final.FailedSOPInstanceUIDList) == uids
    assert reads == uids[:1]  # the one cut off; none after it
    [ended] = _logged(caplog, ENDED)
    assert ended.levelname == "WARNING"
    assert (ended.association, ended.not_sent) == ("C-MOVE sub-association", COUNT - 1)
    assert not _logged(caplog, NO_CONTEXT)


def test_a_requestor_that_aborts_its_get_stops_the_reading(
    tmp_path: Path, reads: list[str], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mimic_server")
    archive = _archive(tmp_path, "UNUSED", free_port())
    try:
        uids = _store_study(archive, tmp_path)
        ctx = first_client_context(archive.settings.data_dir)
        ae = AE(ae_title="MODALITY1")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage, [EXPLICIT])
        assoc = ae.associate(
            HOST, archive.address[1], ae_title="MIMIC", tls_args=(ctx, "localhost"),
            ext_neg=[build_role(CTImageStorage, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, _aborting_get)],
        )
        identifier = Dataset()
        identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", STUDY
        list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
        assert assoc.is_aborted
        # The C-GET goes on in the archive's association thread after the abort.
        assert wait_for(lambda: _logged(caplog, ENDED)), [r.getMessage() for r in caplog.records]
    finally:
        archive.stop(0)
    assert reads == uids[:1]
    [ended] = _logged(caplog, ENDED)
    assert ended.levelname == "WARNING"
    assert ended.association == "C-GET association"
    assert not _logged(caplog, NO_CONTEXT)
