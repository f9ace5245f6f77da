"""With every patched call site moved, the archive runs on pynetdicom's own path.

A pynetdicom release that changed the internals MIMIC patches must not break the archive:
the fence (mimic_server/patches.py) skips each such patch with a WARNING and the library's
own code runs. Here every speed-up's call site is changed in-process (the library function
under a new signature, as an upgrade would) before a real archive starts; a TLS peer then
echoes, stores (bytes kept exactly), finds and gets through it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
)
from pynetdicom.transport import AssociationSocket

from mimic_server import patches
from mimic_server.app import Archive
from mimic_server.config import Settings
from tests.data import ct_copy
from tests.patch_sites import move_every_speed_up
from tests.support import HOST, associate, client_context

UID = "1.2.826.0.1.3680043.8.498.7001"


@pytest.fixture
def fallback_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[tuple[Archive, set[str]]]:
    moved = move_every_speed_up(monkeypatch)
    settings = Settings(host=HOST, port=0, ops_port=0, data_dir=tmp_path / "data", _env_file=None)
    archive = Archive(settings)
    with caplog.at_level(logging.WARNING, logger="mimic_server.patches"):
        archive.start()
    try:
        yield archive, moved
    finally:
        archive.stop(drain_seconds=5)


def _stored_dataset(path: Path) -> bytes:
    stored = path.read_bytes()
    start = stored.index(b"DICM") + 4
    group_length = int.from_bytes(stored[start + 8 : start + 12], "little")
    return stored[start + 12 + group_length :]


def test_every_speed_up_falls_back_and_the_archive_still_serves(
    fallback_archive: tuple[Archive, set[str]], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    archive, moved = fallback_archive
    warned = {
        r.patch: r for r in caplog.get_records("setup")  # type: ignore[attr-defined]
        if r.name == "mimic_server.patches" and r.levelno == logging.WARNING
    }
    assert set(warned) == moved
    for name, record in warned.items():
        patch = next(p for p in patches.PATCHES if p.name == name)
        assert record.found == patches.installed(patch.verified)  # type: ignore[attr-defined]

    certs = archive.settings.certificate_dir
    ctx = client_context(
        certs / "clients" / "modality1" / "client.pem",
        certs / "clients" / "modality1" / "client.key",
        certs / "ca" / "ca.pem",
    )
    port = archive.address[1]
    sent = ct_copy(tmp_path, UID)

    assoc = associate(port, ctx, transfer_syntaxes=[ExplicitVRLittleEndian])
    assert assoc.is_established
    # pynetdicom's own classes on the server side: no swap was applied.
    assert archive.server is not None
    [served] = archive.server.active_associations
    assert type(served.dul) is DULServiceProvider
    assert type(served.dimse) is DIMSEServiceProvider
    assert type(served.dul.socket) is AssociationSocket
    assert assoc.send_c_echo().Status == 0x0000
    assert assoc.send_c_store(sent).Status == 0x0000  # the file's bytes as they are
    assoc.release()

    objects = archive.settings.objects_dir
    [stored] = [
        p for p in objects.rglob("*") if p.is_file() and ".incoming" not in p.parts
    ]
    assert _stored_dataset(stored) == _stored_dataset(sent)

    # C-FIND and C-GET answer through pynetdicom's and pydicom's encoders.
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    ae.add_supported_context(CTImageStorage, scu_role=False, scp_role=True)
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    query = Dataset()
    query.QueryRetrieveLevel, query.PatientID = "PATIENT", pydicom.dcmread(sent).PatientID
    query.PatientName = ""
    assoc = ae.associate(
        HOST, port, ae_title="MIMIC", tls_args=(ctx, "localhost"),
        ext_neg=[_get_role()], evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    answers = list(assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind))
    statuses = [status.Status for status, _ in answers]
    assert statuses == [0xFF00, 0x0000]
    assert answers[0][1].PatientID == query.PatientID
    query.PatientName = None
    del query.PatientName
    results = list(assoc.send_c_get(query, PatientRootQueryRetrieveInformationModelGet))
    assoc.release()
    assert results[-1][0].Status == 0x0000
    assert [ds.SOPInstanceUID for ds in received] == [UID]
    # The sub-operation was sent: no false "not sent" WARNING without the stored-bytes patch.
    assert not [r for r in caplog.records if "sub-operation not sent" in r.getMessage()]


def _get_role():  # type: ignore[no-untyped-def]
    from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation

    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CTImageStorage
    role.scu_role, role.scp_role = False, True
    return role
