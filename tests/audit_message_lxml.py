"""The reference for ``mimic_server/security/audit_message.py``: its builder as it was, on an
lxml tree serialised by ``etree.tostring``, before the messages were written as text.

``tests/unit/test_audit_message.py`` builds every message with both and requires the same
text, byte for byte (and the same refusal of what XML cannot carry). Kept as it was, but its
schema validation (the module under test has it).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lxml import etree


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value (csd-code, codeSystemName, originalText = the code meaning)."""

    code: str
    scheme: str
    meaning: str

    def attributes(self) -> dict[str, str]:
        return {"csd-code": self.code, "codeSystemName": self.scheme, "originalText": self.meaning}


def dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


# PS3.16 CID 400 Audit Event ID
APPLICATION_ACTIVITY = dcm("110100", "Application Activity")
BEGIN_TRANSFERRING = dcm("110102", "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED = dcm("110105", "DICOM Study Deleted")
EXPORT = dcm("110106", "Export")
QUERY = dcm("110112", "Query")
SECURITY_ALERT = dcm("110113", "Security Alert")
USER_AUTHENTICATION = dcm("110114", "User Authentication")

# PS3.16 CID 401 Audit Event Type Code
APPLICATION_START = dcm("110120", "Application Start")
APPLICATION_STOP = dcm("110121", "Application Stop")
LOGIN = dcm("110122", "Login")
LOGOUT = dcm("110123", "Logout")
NODE_AUTHENTICATION = dcm("110126", "Node Authentication")
NETWORK_CONFIGURATION = dcm("110128", "Network Configuration")
SECURITY_CONFIGURATION = dcm("110129", "Security Configuration")
SOFTWARE_CONFIGURATION = dcm("110131", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = dcm("110132", "Use of Restricted Function")

# PS3.16 CID 402 Audit Active Participant Role ID Code
APPLICATION = dcm("110150", "Application")
APPLICATION_LAUNCHER = dcm("110151", "Application Launcher")
DESTINATION = dcm("110152", "Destination Role ID")
SOURCE = dcm("110153", "Source Role ID")

# PS3.16 CID 404 Audit Participant Object ID Type Code, and RFC 3881's patient number
STUDY_INSTANCE_UID = dcm("110180", "Study Instance UID")
SOP_CLASS_UID = dcm("110181", "SOP Class UID")
NODE_ID = dcm("110182", "Node ID")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")

#: EventOutcomeIndicator values (PS3.15 A.5.1).
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12

#: NetworkAccessPointTypeCode values.
MACHINE_NAME, IP_ADDRESS, URI = "1", "2", "5"


@dataclass(frozen=True, slots=True)
class Participant:
    """An ActiveParticipant: a process (AE title, the archive) or a person (a token user)."""

    user_id: str
    is_requestor: bool
    roles: tuple[Code, ...] = ()
    alternative_user_id: str | None = None
    user_name: str | None = None
    network_access_point: str | None = None
    network_access_point_type: str = IP_ADDRESS

    def element(self) -> etree._Element:
        attrs = {"UserID": self.user_id, "UserIsRequestor": _bool(self.is_requestor)}
        if self.alternative_user_id:
            attrs["AlternativeUserID"] = self.alternative_user_id
        if self.user_name:
            attrs["UserName"] = self.user_name
        if self.network_access_point:
            attrs["NetworkAccessPointID"] = self.network_access_point
            attrs["NetworkAccessPointTypeCode"] = self.network_access_point_type
        node = etree.Element("ActiveParticipant", attrs)
        for role in self.roles:
            etree.SubElement(node, "RoleIDCode", role.attributes())
        return node


@dataclass(frozen=True, slots=True)
class StudyObject:
    """A study touched by the event, with its SOP Classes and instance counts; ``instances``
    names the SOP Instance UIDs of a SOP Class where the record is about single instances
    (a C-STORE's own record)."""

    study_instance_uid: str
    sop_classes: Mapping[str, int] = field(default_factory=dict)
    accession_numbers: Sequence[str] = ()
    life_cycle: int | None = None
    instances: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PatientObject:
    patient_id: str
    patient_name: str | None = None


@dataclass(frozen=True, slots=True)
class AuditMessage:
    event: Code
    outcome: int
    participants: Sequence[Participant]
    source_id: str
    action: str | None = None
    event_types: Sequence[Code] = ()
    outcome_description: str | None = None
    objects: Sequence[etree._Element] = ()
    when: datetime = field(default_factory=lambda: datetime.now(UTC))
    site: str | None = None

    def element(self) -> etree._Element:
        root = etree.Element("AuditMessage")
        attrs = {
            "EventDateTime": self.when.isoformat(),
            "EventOutcomeIndicator": str(self.outcome),
        }
        if self.action:
            attrs["EventActionCode"] = self.action
        event = etree.SubElement(root, "EventIdentification", attrs)
        etree.SubElement(event, "EventID", self.event.attributes())
        for event_type in self.event_types:
            etree.SubElement(event, "EventTypeCode", event_type.attributes())
        if self.outcome_description:
            etree.SubElement(event, "EventOutcomeDescription").text = self.outcome_description
        for participant in self.participants:
            root.append(participant.element())
        source = {"AuditSourceID": self.source_id}
        if self.site:
            source["AuditEnterpriseSiteID"] = self.site
        source_node = etree.SubElement(root, "AuditSourceIdentification", source)
        # 4: application server process tier in a multi-tier system.
        etree.SubElement(source_node, "AuditSourceTypeCode", {"csd-code": "4"})
        for obj in self.objects:
            root.append(obj)
        return root

    def to_xml(self) -> str:
        """One line of XML (no declaration): what a syslog message or ``--xml`` carries."""
        return etree.tostring(self.element(), encoding="unicode")


# -- participant objects (A.5.2) ---------------------------------------------------------------


def _object(
    object_id: str, id_type: Code, type_code: str, role: str, *,
    name: str | None = None, query: bytes | None = None,
    details: Iterable[tuple[str, bytes]] = (), life_cycle: int | None = None,
) -> etree._Element:
    attrs = {"ParticipantObjectID": object_id, "ParticipantObjectTypeCode": type_code,
             "ParticipantObjectTypeCodeRole": role}
    if life_cycle is not None:
        attrs["ParticipantObjectDataLifeCycle"] = str(life_cycle)
    node = etree.Element("ParticipantObjectIdentification", attrs)
    etree.SubElement(node, "ParticipantObjectIDTypeCode", id_type.attributes())
    if name is not None:
        etree.SubElement(node, "ParticipantObjectName").text = name
    elif query is not None:
        etree.SubElement(node, "ParticipantObjectQuery").text = _b64(query)
    for kind, value in details:
        etree.SubElement(node, "ParticipantObjectDetail", {"type": kind, "value": _b64(value)})
    return node


def study_object(study: StudyObject) -> etree._Element:
    node = _object(study.study_instance_uid, STUDY_INSTANCE_UID, "2", "3",
                   life_cycle=study.life_cycle)
    if study.sop_classes or study.accession_numbers:
        description = etree.SubElement(node, "ParticipantObjectDescription")
        for number in study.accession_numbers:
            etree.SubElement(description, "Accession", {"Number": number})
        for uid, count in sorted(study.sop_classes.items()):
            sop_class = etree.SubElement(description, "SOPClass",
                                         {"UID": uid, "NumberOfInstances": str(count)})
            for instance in study.instances.get(uid, ()):
                etree.SubElement(sop_class, "Instance", {"UID": instance})
    return node


def patient_object(patient: PatientObject) -> etree._Element:
    return _object(patient.patient_id or "(none)", PATIENT_NUMBER, "1", "1",
                   name=patient.patient_name or None)


# -- messages per event (A.5.3) ------------------------------------------------------------


def application_activity(application: Participant, started: bool, source_id: str,
                         launcher: Participant | None = None) -> AuditMessage:
    participants = [application] + ([launcher] if launcher else [])
    return AuditMessage(
        APPLICATION_ACTIVITY, SUCCESS, participants, source_id, action="E",
        event_types=(APPLICATION_START if started else APPLICATION_STOP,),
    )


def security_alert(
    reporter: Participant, event_type: Code, outcome: int, subject: str, description: str,
    source_id: str, performer: Participant | None = None,
) -> AuditMessage:
    """``subject``: what the alert is about (a node, a certificate, a setting); ``description``
    names the reason (and, for an aggregated alert, how often it happened)."""
    alert = _object(subject, NODE_ID, "2", "13", details=[("Alert Description",
                                                           description.encode())])
    participants = [reporter] + ([performer] if performer else [])
    return AuditMessage(SECURITY_ALERT, outcome, participants, source_id, action="E",
                        event_types=(event_type,), outcome_description=description,
                        objects=[alert])


def user_authentication(user: Participant, node: Participant, login: bool, outcome: int,
                        source_id: str, description: str | None = None) -> AuditMessage:
    return AuditMessage(USER_AUTHENTICATION, outcome, [user, node], source_id, action="E",
                        event_types=(LOGIN if login else LOGOUT,),
                        outcome_description=description)


def query(requestor: Participant, responder: Participant, sop_class_uid: str,
          identifier: bytes, transfer_syntax_uid: str, outcome: int, source_id: str,
          others: Sequence[Participant] = ()) -> AuditMessage:
    """The Identifier as received (its bytes, base64 in ParticipantObjectQuery, A.5.3.12)."""
    queried = _object(sop_class_uid, SOP_CLASS_UID, "2", "3", query=identifier,
                      details=[("TransferSyntax", transfer_syntax_uid.encode())])
    return AuditMessage(QUERY, outcome, [requestor, responder, *others], source_id, action="E",
                        objects=[queried])


def _transfer(event: Code, action: str, source: Participant, destination: Participant,
              studies: Sequence[StudyObject], patient: PatientObject | None, outcome: int,
              source_id: str, others: Sequence[Participant]) -> AuditMessage:
    objects = [study_object(s) for s in studies]
    if patient is not None:
        objects.append(patient_object(patient))
    return AuditMessage(event, outcome, [source, destination, *others], source_id,
                        action=action, objects=objects)


def begin_transferring(source: Participant, destination: Participant,
                       studies: Sequence[StudyObject], patient: PatientObject | None,
                       outcome: int, source_id: str,
                       others: Sequence[Participant] = ()) -> AuditMessage:
    return _transfer(BEGIN_TRANSFERRING, "E", source, destination, studies, patient, outcome,
                     source_id, others)


def instances_transferred(source: Participant, destination: Participant,
                          studies: Sequence[StudyObject], patient: PatientObject | None,
                          outcome: int, source_id: str, *, received: bool,
                          updated: bool = False,
                          others: Sequence[Participant] = ()) -> AuditMessage:
    """``received``: the archive is the destination (C-STORE, STOW-RS: action C, or U when an
    instance replaced one already held); otherwise it sent them (C-MOVE, C-GET: action R)."""
    action = ("U" if updated else "C") if received else "R"
    return _transfer(INSTANCES_TRANSFERRED, action, source, destination, studies, patient,
                     outcome, source_id, others)


def instances_accessed(accessor: Participant, action: str, studies: Sequence[StudyObject],
                       patient: PatientObject | None, outcome: int, source_id: str,
                       others: Sequence[Participant] = ()) -> AuditMessage:
    objects = [study_object(s) for s in studies]
    if patient is not None:
        objects.append(patient_object(patient))
    return AuditMessage(INSTANCES_ACCESSED, outcome, [accessor, *others], source_id,
                        action=action, objects=objects)


def export(exporter: Participant, destination: Participant, studies: Sequence[StudyObject],
           patient: PatientObject | None, outcome: int, source_id: str) -> AuditMessage:
    return _transfer(EXPORT, "R", exporter, destination, studies, patient, outcome, source_id,
                     ())


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
