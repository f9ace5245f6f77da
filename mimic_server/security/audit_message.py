"""DICOM audit messages (PS3.15 A.5): the XML an audit repository (IHE ATNA) reads.

Plain data classes for the parts of a message and one builder per event MIMIC records
(A.5.3): Application Activity, Audit Log Used, Security Alert, User Authentication, Query,
Begin Transferring DICOM Instances, DICOM Instances Transferred, DICOM Instances Accessed and
Export. The XML is
held to the schema in ``schemas/audit-message.rng`` (written from PS3.15 A.5.1) by the tests.
Messages name patients and studies: they go to the audit trail, never to the log.

Messages are written as text, not built as an lxml tree and serialised: every C-STORE of the
PostgreSQL configuration builds one (section 9 of docs/architecture.md), and the tree cost
about 0.3 ms of its 0.4. The text is the one lxml wrote, byte for byte (attribute and text
escapes, ``<Tag/>`` for an empty element, ``<Tag></Tag>`` for an empty text):
``tests/unit/test_audit_message.py`` holds it to the lxml builder this replaced
(``tests/audit_message_lxml.py``). Where lxml refused a string XML cannot carry (a control
character, U+FFFE, U+FFFF, a lone surrogate) with ``ValueError``, each such character is
written as U+FFFD: the values come from senders (a Patient's Name with one control character
in it), and a refused message was a record lost, the object stored without its DICOM
Instances Transferred and every later retrieve of that patient unaudited. The parts that repeat from
message to message (the archive and the requestor as participants, the codes, the audit
source) are written once and kept.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lxml import etree

SCHEMA = Path(__file__).with_name("schemas") / "audit-message.rng"


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value (csd-code, codeSystemName, originalText = the code meaning)."""

    code: str
    scheme: str
    meaning: str

    def attributes(self) -> dict[str, str]:
        return {"csd-code": self.code, "codeSystemName": self.scheme, "originalText": self.meaning}

    def xml(self, tag: str) -> str:
        """The code as the element ``tag`` (EventID, RoleIDCode, ...)."""
        return _code_xml(tag, self)


def dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


# PS3.16 CID 400 Audit Event ID
APPLICATION_ACTIVITY = dcm("110100", "Application Activity")
AUDIT_LOG_USED = dcm("110101", "Audit Log Used")
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
URI_ID = Code("12", "RFC-3881", "URI")

#: EventOutcomeIndicator values (PS3.15 A.5.1).
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12

#: NetworkAccessPointTypeCode values.
MACHINE_NAME, IP_ADDRESS, URI = "1", "2", "5"

#: Bytes of a query Identifier a Query message carries (A.5.3.12 ParticipantObjectQuery).
#: An Identifier may be 8 MiB: whole, its base64 made each message 11 MB, held by every sink
#: (the syslog queue while the repository is down, the file, the table). Real ones are a
#: few hundred bytes; a longer one is cut here, its length in ``IdentifierLength``.
QUERY_BYTES = 64 * 1024


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

    def xml(self) -> str:
        """The ActiveParticipant element (the same participant is written once)."""
        return _participant_xml(self)


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
    """One message; ``objects`` are ParticipantObjectIdentification elements as XML text
    (``study_object``, ``patient_object``)."""

    event: Code
    outcome: int
    participants: Sequence[Participant]
    source_id: str
    action: str | None = None
    event_types: Sequence[Code] = ()
    outcome_description: str | None = None
    objects: Sequence[str] = ()
    when: datetime = field(default_factory=lambda: datetime.now(UTC))
    site: str | None = None

    def to_xml(self) -> str:
        """One line of XML (no declaration): what a syslog message or ``--xml`` carries."""
        parts = ['<AuditMessage><EventIdentification EventDateTime="',
                 _attribute(self.when.isoformat()), '" EventOutcomeIndicator="',
                 _attribute(str(self.outcome))]
        if self.action:
            parts += ['" EventActionCode="', _attribute(self.action)]
        parts += ['">', _code_xml("EventID", self.event)]
        parts += [_code_xml("EventTypeCode", event_type) for event_type in self.event_types]
        if self.outcome_description:
            parts.append(_text_element("EventOutcomeDescription", self.outcome_description))
        parts.append("</EventIdentification>")
        parts += [_participant_xml(participant) for participant in self.participants]
        parts.append(_source_xml(self.source_id, self.site))
        parts += self.objects
        parts.append("</AuditMessage>")
        return "".join(parts)


# -- XML text, as lxml wrote it ----------------------------------------------------------------

#: What XML 1.0 cannot carry (lxml refuses it), and what needs an escape in an attribute or in
#: text (libxml2's serialiser escapes a tab, a line feed or a carriage return in an attribute,
#: a carriage return in text).
_NOT_XML = "\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff"
_INVALID = re.compile(f"[{_NOT_XML}]")
_ATTRIBUTE_SPECIAL = re.compile(f'[&<>"\t\n\r{_NOT_XML}]')
_TEXT_SPECIAL = re.compile(f"[&<>\r{_NOT_XML}]")
_ATTRIBUTE_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                    "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


def _carried(value: str) -> str:
    """``value`` with each character XML 1.0 cannot carry replaced by U+FFFD."""
    return _INVALID.sub("\ufffd", value)


def _attribute(value: str) -> str:
    """An attribute's value, escaped (without its quotes)."""
    if _ATTRIBUTE_SPECIAL.search(value) is None:
        return value
    return _carried(value).translate(_ATTRIBUTE_ESCAPES)


def _start(tag: str, attributes: Iterable[tuple[str, str]]) -> str:
    """``<tag a="v" ...`` without its closing bracket."""
    return "<" + tag + "".join(f' {name}="{_attribute(value)}"' for name, value in attributes)


def _element(tag: str, attributes: Iterable[tuple[str, str]], children: str = "") -> str:
    start = _start(tag, attributes)
    return f"{start}>{children}</{tag}>" if children else start + "/>"


def _text_element(tag: str, text: str) -> str:
    if _TEXT_SPECIAL.search(text) is not None:
        text = _carried(text).translate(_TEXT_ESCAPES)
    return f"<{tag}>{text}</{tag}>"


@functools.lru_cache(maxsize=256)
def _code_xml(tag: str, code: Code) -> str:
    return _element(tag, code.attributes().items())


@functools.lru_cache(maxsize=1024)
def _participant_xml(participant: Participant) -> str:
    """The same archive, and the same requestor for every C-STORE of an association: written
    once. (Participants hold AE titles, certificate names and addresses, no patient data.)"""
    attributes = [("UserID", participant.user_id),
                  ("UserIsRequestor", _bool(participant.is_requestor))]
    if participant.alternative_user_id:
        attributes.append(("AlternativeUserID", participant.alternative_user_id))
    if participant.user_name:
        attributes.append(("UserName", participant.user_name))
    if participant.network_access_point:
        attributes.append(("NetworkAccessPointID", participant.network_access_point))
        attributes.append(("NetworkAccessPointTypeCode", participant.network_access_point_type))
    roles = "".join(_code_xml("RoleIDCode", role) for role in participant.roles)
    return _element("ActiveParticipant", attributes, roles)


@functools.lru_cache(maxsize=64)
def _source_xml(source_id: str, site: str | None) -> str:
    attributes = [("AuditSourceID", source_id)]
    if site:
        attributes.append(("AuditEnterpriseSiteID", site))
    # 4: application server process tier in a multi-tier system.
    return _element("AuditSourceIdentification", attributes,
                    _element("AuditSourceTypeCode", [("csd-code", "4")]))


# -- participant objects (A.5.2) ---------------------------------------------------------------


def _object(
    object_id: str, id_type: Code, type_code: str, role: str, *,
    name: str | None = None, query: bytes | None = None,
    details: Iterable[tuple[str, bytes]] = (), life_cycle: int | None = None,
    description: str = "",
) -> str:
    """A ParticipantObjectIdentification; ``description``: its ParticipantObjectDescription
    element, last."""
    attributes = [("ParticipantObjectID", object_id), ("ParticipantObjectTypeCode", type_code),
                  ("ParticipantObjectTypeCodeRole", role)]
    if life_cycle is not None:
        attributes.append(("ParticipantObjectDataLifeCycle", str(life_cycle)))
    parts = [_code_xml("ParticipantObjectIDTypeCode", id_type)]
    if name is not None:
        parts.append(_text_element("ParticipantObjectName", name))
    elif query is not None:
        parts.append(_text_element("ParticipantObjectQuery", _b64(query)))
    for kind, value in details:
        parts.append(_element("ParticipantObjectDetail", [("type", kind), ("value", _b64(value))]))
    parts.append(description)
    return _element("ParticipantObjectIdentification", attributes, "".join(parts))


def study_object(study: StudyObject) -> str:
    description = ""
    if study.sop_classes or study.accession_numbers:
        parts = [_element("Accession", [("Number", number)])
                 for number in study.accession_numbers]
        for uid, count in sorted(study.sop_classes.items()):
            instances = "".join(_element("Instance", [("UID", instance)])
                                for instance in study.instances.get(uid, ()))
            parts.append(_element("SOPClass", [("UID", uid), ("NumberOfInstances", str(count))],
                                  instances))
        description = _element("ParticipantObjectDescription", (), "".join(parts))
    return _object(study.study_instance_uid, STUDY_INSTANCE_UID, "2", "3",
                   life_cycle=study.life_cycle, description=description)


def patient_object(patient: PatientObject) -> str:
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
                                                           description.encode("utf-8", "replace"))])
    participants = [reporter] + ([performer] if performer else [])
    return AuditMessage(SECURITY_ALERT, outcome, participants, source_id, action="E",
                        event_types=(event_type,), outcome_description=description,
                        objects=[alert])


def audit_log_used(readers: Sequence[Participant], application: Participant, log_uri: str,
                   outcome: int, source_id: str,
                   description: str | None = None) -> AuditMessage:
    """Someone read the audit trail (A.5.3.2): the readers (the person, and the process
    they used), the archive that keeps the trail, and the trail itself as a Security
    Resource named by its URI."""
    trail = _object(log_uri, URI_ID, "2", "13", name="Security Audit Log")
    return AuditMessage(AUDIT_LOG_USED, outcome, [*readers, application], source_id,
                        action="R", outcome_description=description, objects=[trail])


def user_authentication(user: Participant, node: Participant, login: bool, outcome: int,
                        source_id: str, description: str | None = None) -> AuditMessage:
    return AuditMessage(USER_AUTHENTICATION, outcome, [user, node], source_id, action="E",
                        event_types=(LOGIN if login else LOGOUT,),
                        outcome_description=description)


def query(requestor: Participant, responder: Participant, sop_class_uid: str,
          identifier: bytes, transfer_syntax_uid: str, outcome: int, source_id: str,
          others: Sequence[Participant] = ()) -> AuditMessage:
    """The Identifier as received (its bytes, base64 in ParticipantObjectQuery, A.5.3.12):
    its first :data:`QUERY_BYTES`; one longer than that is cut there, and its length is a
    ParticipantObjectDetail ``IdentifierLength`` (decimal digits), so a reader knows the
    query it holds is a part."""
    details = [("TransferSyntax", transfer_syntax_uid.encode("utf-8", "replace"))]
    if len(identifier) > QUERY_BYTES:
        details.append(("IdentifierLength", str(len(identifier)).encode()))
        identifier = identifier[:QUERY_BYTES]
    queried = _object(sop_class_uid, SOP_CLASS_UID, "2", "3", query=identifier,
                      details=details)
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


# -- validation ------------------------------------------------------------------------------

_schema: etree.RelaxNG | None = None


def validate(xml: str | bytes) -> None:
    """Raise ``etree.DocumentInvalid`` unless ``xml`` is a DICOM audit message."""
    global _schema
    if _schema is None:
        _schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
    document = etree.fromstring(xml.encode() if isinstance(xml, str) else xml)
    _schema.assertValid(document)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
