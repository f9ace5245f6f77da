"""Which attribute belongs to which Query/Retrieve level, and which have typed index columns.

PS3.4 C.6.1 (Patient Root) and C.6.2 (Study Root): in the Study Root model the patient's
attributes are study-level attributes. Attributes not listed here are matched and returned
from the stored header of an entity at the query level.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from mimic_server.index.models import Instance, Patient, Series, Study


class Level(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        return ORDER.index(self)


ORDER = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)


class Model(StrEnum):
    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"

    def levels(self) -> tuple[Level, ...]:
        return ORDER if self is Model.PATIENT_ROOT else ORDER[1:]


UNIQUE_KEY = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}

_PATIENT = {
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "OtherPatientIDsSequence", "PatientBirthTime", "EthnicGroup", "PatientComments",
    "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
}
_STUDY = {
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
    "ReferringPhysicianName", "StudyDescription", "ModalitiesInStudy", "SOPClassesInStudy",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "PatientAge",
    "PatientSize", "PatientWeight", "IssuerOfAccessionNumberSequence",
    "ProcedureCodeSequence", "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription",
}
_SERIES = {
    "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate",
    "SeriesTime", "BodyPartExamined", "NumberOfSeriesRelatedInstances", "Laterality",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
}
_IMAGE = {"SOPInstanceUID", "SOPClassUID", "InstanceNumber"}

#: Keys that are never matched: they describe the query itself or are answered by us.
CONTROL = {
    "QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability",
    "TimezoneOffsetFromUTC", "QueryRetrieveView",
}

COMPUTED = {
    "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "NumberOfSeriesRelatedInstances", "ModalitiesInStudy",
    "SOPClassesInStudy",
}

#: keyword -> typed index column.
COLUMNS: dict[str, Any] = {
    "PatientName": Patient.patient_name,
    "PatientID": Patient.patient_id,
    "IssuerOfPatientID": Patient.issuer_of_patient_id,
    "PatientBirthDate": Patient.patient_birth_date,
    "PatientSex": Patient.patient_sex,
    "StudyInstanceUID": Study.study_instance_uid,
    "StudyDate": Study.study_date,
    "StudyTime": Study.study_time,
    "AccessionNumber": Study.accession_number,
    "StudyID": Study.study_id,
    "StudyDescription": Study.study_description,
    "ReferringPhysicianName": Study.referring_physician_name,
    "SeriesInstanceUID": Series.series_instance_uid,
    "Modality": Series.modality,
    "SeriesNumber": Series.series_number,
    "SeriesDescription": Series.series_description,
    "SeriesDate": Series.series_date,
    "SeriesTime": Series.series_time,
    "BodyPartExamined": Series.body_part_examined,
    "SOPInstanceUID": Instance.sop_instance_uid,
    "SOPClassUID": Instance.sop_class_uid,
    "InstanceNumber": Instance.instance_number,
}


def level_of(keyword: str, model: Model, query_level: Level) -> Level:
    """The level an attribute belongs to in ``model``; unknown ones belong to the query level."""
    if keyword in _PATIENT:
        return Level.STUDY if model is Model.STUDY_ROOT else Level.PATIENT
    if keyword in _STUDY:
        return Level.STUDY
    if keyword in _SERIES:
        return Level.SERIES
    if keyword in _IMAGE:
        return Level.IMAGE
    return query_level
