"""An instance sent again under another study or series (the modality corrected a mis-filed
study), against a real ``mimic serve``: C-FIND must answer neither the series nor the study
(nor the patient) it left when nothing else is filed there, and the counts of those that
remain must be those of their instances.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from tests.data import ct_small
from tests.support import MimicProcess, associate, client_context

PR_FIND = PatientRootQueryRetrieveInformationModelFind
SR_FIND = StudyRootQueryRetrieveInformationModelFind
_ROOT = "1.2.826.0.1.3680043.8.498.77"


def _tls(server: MimicProcess):  # type: ignore[no-untyped-def]
    return client_context(server.client_cert, server.client_key, server.ca_cert)


def _object(directory: Path, n: int, *, study: int, series: int, patient: str) -> Path:
    ds = pydicom.dcmread(ct_small())
    ds.PatientID = patient
    ds.StudyInstanceUID = f"{_ROOT}.1.{study}"
    ds.SeriesInstanceUID = f"{_ROOT}.2.{series}"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{_ROOT}.3.{n}"
    path = directory / f"{n}-{study}-{series}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _store(server: MimicProcess, *paths: Path) -> None:
    assoc = associate(server.port, _tls(server), contexts=[CTImageStorage])
    assert assoc.is_established
    try:
        for path in paths:
            assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.release()


def _find(server: MimicProcess, level: str, model: str = SR_FIND, **keys: Any) -> list[Dataset]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    assoc = associate(server.port, _tls(server), contexts=[model])
    assert assoc.is_established
    answers, final = [], None
    try:
        for status, ds in assoc.send_c_find(identifier, model):
            if status.Status in (0xFF00, 0xFF01):
                answers.append(ds)
            else:
                final = status.Status
    finally:
        assoc.release()
    assert final == 0x0000
    return answers


def _studies(server: MimicProcess, patient: str) -> dict[str, tuple[int, int]]:
    """The patient's studies as C-FIND answers them: UID -> (series, instances)."""
    return {
        str(a.StudyInstanceUID): (int(a.NumberOfStudyRelatedSeries),
                                  int(a.NumberOfStudyRelatedInstances))
        for a in _find(server, "STUDY", PatientID=patient, StudyInstanceUID="",
                       NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="")
    }


def _series(server: MimicProcess, study: int) -> dict[str, int]:
    return {
        str(a.SeriesInstanceUID): int(a.NumberOfSeriesRelatedInstances)
        for a in _find(server, "SERIES", StudyInstanceUID=f"{_ROOT}.1.{study}",
                       SeriesInstanceUID="", NumberOfSeriesRelatedInstances="")
    }


def test_a_study_left_empty_by_a_resend_is_not_answered(
    server: MimicProcess, tmp_path: Path
) -> None:
    """The only instance of study 1 is sent again under study 2: study 1, its series and
    nothing else is answered; study 2 counts the instance."""
    _store(server, _object(tmp_path, 1, study=1, series=1, patient="RESEND1"))
    assert _studies(server, "RESEND1") == {f"{_ROOT}.1.1": (1, 1)}
    _store(server, _object(tmp_path, 1, study=2, series=2, patient="RESEND1"))
    assert _studies(server, "RESEND1") == {f"{_ROOT}.1.2": (1, 1)}
    assert _series(server, 1) == {}
    assert _series(server, 2) == {f"{_ROOT}.2.2": 1}
    images = _find(server, "IMAGE", StudyInstanceUID=f"{_ROOT}.1.2",
                   SeriesInstanceUID=f"{_ROOT}.2.2", SOPInstanceUID="")
    assert [str(a.SOPInstanceUID) for a in images] == [f"{_ROOT}.3.1"]


def test_a_series_left_empty_in_a_study_that_keeps_others(
    server: MimicProcess, tmp_path: Path
) -> None:
    """Study 3 holds series 3 (two instances) and series 4 (one): series 4's instance sent
    again under series 5 of study 3 leaves series 4 empty, and then one of series 3's under
    study 4 leaves study 3 with series 3 and 5, one instance each."""
    _store(server, _object(tmp_path, 2, study=3, series=3, patient="RESEND2"),
           _object(tmp_path, 3, study=3, series=3, patient="RESEND2"),
           _object(tmp_path, 4, study=3, series=4, patient="RESEND2"))
    assert _studies(server, "RESEND2") == {f"{_ROOT}.1.3": (2, 3)}
    _store(server, _object(tmp_path, 4, study=3, series=5, patient="RESEND2"))
    assert _series(server, 3) == {f"{_ROOT}.2.3": 2, f"{_ROOT}.2.5": 1}
    assert _studies(server, "RESEND2") == {f"{_ROOT}.1.3": (2, 3)}
    _store(server, _object(tmp_path, 3, study=4, series=6, patient="RESEND2"))
    assert _studies(server, "RESEND2") == {f"{_ROOT}.1.3": (2, 2), f"{_ROOT}.1.4": (1, 1)}
    assert _series(server, 3) == {f"{_ROOT}.2.3": 1, f"{_ROOT}.2.5": 1}


def test_a_patient_left_without_studies_is_not_answered(
    server: MimicProcess, tmp_path: Path
) -> None:
    """The instance was filed under the wrong patient: sent again under the right Patient
    ID (and a new study), the wrong patient is answered no more at PATIENT level."""
    _store(server, _object(tmp_path, 5, study=5, series=7, patient="RESEND3WRONG"))
    _store(server, _object(tmp_path, 5, study=6, series=8, patient="RESEND3"))
    patients = _find(server, "PATIENT", PR_FIND, PatientID="RESEND3*",
                     NumberOfPatientRelatedStudies="", NumberOfPatientRelatedInstances="")
    assert {(str(a.PatientID), int(a.NumberOfPatientRelatedStudies),
             int(a.NumberOfPatientRelatedInstances)) for a in patients} == {("RESEND3", 1, 1)}
