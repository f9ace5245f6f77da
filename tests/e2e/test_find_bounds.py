"""One C-FIND cannot freeze the archive (issue 10): the attack, replayed through the network.

A trusted peer sent one study-level C-FIND whose Patient's Name key had many ``*`` against
50 stored names of about 32 characters. A backtracking matcher spent minutes on it, holding
the GIL, and every other association waited. Here the same key is sent from one pynetdicom
association while another sends a C-ECHO: both must be answered with their DICOM status
(before the fix, the C-FIND outlived its 60 s DIMSE timeout). Keys past the bounds are
refused 0xC000, and a query past its time budget ends 0xA700, with an Error Comment.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from tests.data import ct_small
from tests.support import HOST, MimicProcess, associate, client_context

pytestmark = pytest.mark.timeout(240)

SR_FIND = StudyRootQueryRetrieveInformationModelFind
PATIENTS = 50
UID_ROOT = "1.2.826.0.1.3680043.8.498.11"
#: Fifteen '*' (within the bound of 16): each stored name contains a B, so the index
#: prefilter passes all 50, and none ends with one, so a backtracking matcher tries
#: every way of placing fourteen A's in a name (about 10^8) before it says no.
ADVERSARIAL = "*A" * 14 + "*B"


def _patient_files(directory: Path) -> list[Path]:
    """CT_small.dcm as 50 patients (one study each) named ``AAAA…AB^Xnn`` (33 characters)."""
    base = pydicom.dcmread(ct_small())
    paths = []
    for n in range(PATIENTS):
        ds = copy.deepcopy(base)
        ds.PatientID = f"FIND{n:03d}"
        ds.PatientName = f"{'A' * 28}B^X{n:02d}"
        ds.StudyInstanceUID = f"{UID_ROOT}.1.{n}"
        ds.SeriesInstanceUID = f"{UID_ROOT}.2.{n}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}.3.{n}"
        paths.append(directory / f"{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[MimicProcess]:
    """MIMIC (default time budget) holding the 50 patients."""
    root = tmp_path_factory.mktemp("find-bounds")
    server = MimicProcess(root / "data", database_url=database_url).start()
    try:
        assoc = associate(
            server.port, _tls(server), contexts=[CTImageStorage],
            transfer_syntaxes=["1.2.840.10008.1.2.1"],  # CT_small.dcm as stored
        )
        for path in _patient_files(root):
            assert assoc.send_c_store(path).Status == 0
        assoc.release()
        yield server
    finally:
        assert server.stop() == 0, server.log()


def _tls(server: MimicProcess):  # type: ignore[no-untyped-def]
    return client_context(server.client_cert, server.client_key, server.ca_cert)


def _find(server: MimicProcess, patient_name: str) -> tuple[int, Dataset]:
    """(number of Pending answers, final status) of one study-level C-FIND."""
    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.network_timeout = 30
    ae.dimse_timeout = 60
    ae.add_requested_context(SR_FIND)
    assoc = ae.associate(HOST, server.port, ae_title="MIMIC", tls_args=(_tls(server), "localhost"))
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientName = patient_name
    identifier.StudyInstanceUID = ""
    pending, final = 0, Dataset()
    for status, _ in assoc.send_c_find(identifier, SR_FIND):
        if status.get("Status") in (0xFF00, 0xFF01):
            pending += 1
        else:
            final = status
    if assoc.is_established:
        assoc.release()
    return pending, final


def _echo(server: MimicProcess) -> int:
    assoc = associate(server.port, _tls(server), contexts=[Verification])
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.get("Status", -1))


def test_adversarial_wildcards_do_not_stall_another_association(archive: MimicProcess) -> None:
    found: list[tuple[int, Dataset]] = []
    query = threading.Thread(target=lambda: found.append(_find(archive, ADVERSARIAL)))
    query.start()
    try:
        assert _echo(archive) == 0x0000
    finally:
        query.join()
    pending, final = found[0]
    assert final.get("Status") == 0x0000 and pending == 0
    # The same names are still found by a key that matches them.
    pending, final = _find(archive, ADVERSARIAL + "*")
    assert final.Status == 0x0000 and pending == PATIENTS
    line = next(e for e in reversed(archive.log_entries()) if e.get("message") == "C-FIND")
    assert line["level"] == "INFO" and line["query_level"] == "STUDY"


@pytest.mark.parametrize("key", ["*A" * 17, "A" * 257 + "*", "\\".join(["A*"] * 257)])
def test_keys_past_the_bounds_are_refused(archive: MimicProcess, key: str) -> None:
    pending, final = _find(archive, key)
    assert pending == 0
    assert final.Status == 0xC000 and "PatientName" in final.ErrorComment
    assert _echo(archive) == 0x0000


def test_a_query_past_its_time_budget_ends_out_of_resources(
    tmp_path: Path, database_url: str
) -> None:
    server = MimicProcess(
        tmp_path / "data", database_url=database_url, find_time_limit_seconds="0.000000001"
    ).start()
    try:
        pending, final = _find(server, "*")
        assert pending == 0
        assert final.Status == 0xA700 and "time limit" in final.ErrorComment
        assert _echo(server) == 0x0000
    finally:
        assert server.stop() == 0, server.log()
