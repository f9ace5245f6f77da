"""The STOW-RS answer (PS3.18 10.5.3 and Annex I, the Store Instances Response Module) as
DICOM JSON, and its HTTP status.

Each stored instance is a ReferencedSOPSequence item with its Retrieve URL; each refused
part a FailedSOPSequence item with a Failure Reason, the DIMSE status the C-STORE of the
same object would have answered (``0xA700`` out of resources, ``0xA900`` SOP Class differs,
``0xC000`` cannot understand, ``0xC001`` SOP Instance UID differs from the File Meta,
``0xC002`` an attribute the index needs missing or invalid, ``0xC003`` its study or series
filed under another patient or study) plus ``0xC122`` (transfer
syntax not supported) and ``0xC409`` (another study than the request's target). A part whose
File Meta could not be read has no UIDs to name: its item carries the Failure Reason only.
HTTP: 200 all stored, 202 some stored and some failed, 409 none stored, 503 none stored and
every failure was out of resources that may pass (PS3.18 10.5.3.1 and 8.5), 413 none stored
and every part larger than the archive takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mimic_server.errors import Status

#: (0008,1190) Retrieve URL, (0008,1198) Failed SOP Sequence, (0008,1199) Referenced SOP
#: Sequence, (0008,1150) / (0008,1155) Referenced SOP Class / Instance UID, (0008,1197)
#: Failure Reason.
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


@dataclass(frozen=True, slots=True)
class Stored:
    sop_class_uid: str
    sop_instance_uid: str
    retrieve_url: str


@dataclass(frozen=True, slots=True)
class Failed:
    sop_class_uid: str
    sop_instance_uid: str
    reason: int
    #: Refused for its size alone (``MIMIC_MAX_OBJECT_BYTES``): 0xA700, and no retry mends it.
    too_large: bool = False


@dataclass
class StowOutcome:
    """What one STOW-RS request stored and refused, in the order of its parts."""

    stored: list[Stored] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)

    def http_status(self) -> int:
        if not self.failed:
            return 200
        if self.stored:
            return 202
        if all(f.too_large for f in self.failed):
            # 503 told the sender to try again later: a router retried an object that can
            # never fit, without end. 413: the content is larger than the server will take.
            return 413
        if all(f.reason & 0xFF00 == Status.OUT_OF_RESOURCES and not f.too_large
               for f in self.failed):
            return 503
        return 409

    def dicom_json(self, study_url: str | None) -> dict[str, Any]:
        answer: dict[str, Any] = {}
        if study_url is not None:
            answer[RETRIEVE_URL] = {"vr": "UR", "Value": [study_url]}
        if self.failed:
            answer[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [
                {**_uids(f.sop_class_uid, f.sop_instance_uid),
                 FAILURE_REASON: {"vr": "US", "Value": [f.reason]}}
                for f in self.failed
            ]}
        if self.stored:
            answer[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [
                {**_uids(s.sop_class_uid, s.sop_instance_uid),
                 RETRIEVE_URL: {"vr": "UR", "Value": [s.retrieve_url]}}
                for s in self.stored
            ]}
        return answer


def _uids(sop_class_uid: str, sop_instance_uid: str) -> dict[str, Any]:
    named: dict[str, Any] = {}
    if sop_class_uid:
        named[REFERENCED_SOP_CLASS_UID] = {"vr": "UI", "Value": [sop_class_uid]}
    if sop_instance_uid:
        named[REFERENCED_SOP_INSTANCE_UID] = {"vr": "UI", "Value": [sop_instance_uid]}
    return named
