"""Every audit message MIMIC builds validates against the PS3.15 A.5.1 schema; the schema
itself refuses what the standard does not allow."""

from __future__ import annotations

import base64

import pytest
from lxml import etree

from mimic_server.security import audit_message as am

ARCHIVE = am.Participant("MIMIC", False, (am.DESTINATION,), alternative_user_id="pid=42",
                         network_access_point="archive.example.org",
                         network_access_point_type=am.MACHINE_NAME)
MODALITY = am.Participant("CT01", True, (am.SOURCE,), user_name="CN=ct-room-1",
                          network_access_point="10.0.0.5")
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = am.StudyObject("1.2.3.4", {CT: 3}, ("A123",))
PATIENT = am.PatientObject("PID-1", "Doe^Jane")


def _messages() -> dict[str, am.AuditMessage]:
    return {
        "application-start": am.application_activity(
            am.Participant("MIMIC", False, (am.APPLICATION,)), True, "MIMIC"),
        "application-stop": am.application_activity(
            am.Participant("MIMIC", False, (am.APPLICATION,)), False, "MIMIC",
            launcher=am.Participant("operator", True, (am.APPLICATION_LAUNCHER,))),
        "security-alert": am.security_alert(
            am.Participant("MIMIC", False), am.NODE_AUTHENTICATION, am.MINOR_FAILURE,
            "10.0.0.9", "untrusted certificate, 17 connections in 60 s", "MIMIC"),
        "user-authentication": am.user_authentication(
            am.Participant("jane@example.org", True, network_access_point="10.0.0.5"),
            ARCHIVE, True, am.SERIOUS_FAILURE, "MIMIC", "token has expired"),
        "query": am.query(MODALITY, ARCHIVE, "1.2.840.10008.5.1.4.1.2.2.1",
                          b"\x08\x00\x52\x00\x06\x00STUDY ", "1.2.840.10008.1.2",
                          am.SUCCESS, "MIMIC"),
        "begin-transferring": am.begin_transferring(
            ARCHIVE, MODALITY, [STUDY], PATIENT, am.SUCCESS, "MIMIC"),
        "instances-received": am.instances_transferred(
            MODALITY, ARCHIVE, [STUDY], PATIENT, am.SUCCESS, "MIMIC", received=True),
        "instances-sent": am.instances_transferred(
            ARCHIVE, MODALITY, [STUDY, am.StudyObject("1.2.3.5")], None, am.MINOR_FAILURE,
            "MIMIC", received=False),
        "instances-accessed": am.instances_accessed(
            am.Participant("jane@example.org", True), "R", [STUDY], PATIENT, am.SUCCESS, "MIMIC"),
        "export": am.export(ARCHIVE, am.Participant("WORKSTATION", False, (am.DESTINATION,)),
                            [STUDY], PATIENT, am.SUCCESS, "MIMIC"),
    }


@pytest.mark.parametrize("name", sorted(_messages()))
def test_message_validates(name: str) -> None:
    xml = _messages()[name].to_xml()
    am.validate(xml)
    assert "\n" not in xml  # one message per line (syslog, mimic audit --xml)


def test_query_carries_the_identifier_and_transfer_syntax() -> None:
    root = etree.fromstring(_messages()["query"].to_xml())
    obj = root.find("ParticipantObjectIdentification")
    assert obj.get("ParticipantObjectTypeCodeRole") == "3"
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery")).endswith(b"STUDY ")
    detail = obj.find("ParticipantObjectDetail")
    assert detail.get("type") == "TransferSyntax"
    assert base64.b64decode(detail.get("value")) == b"1.2.840.10008.1.2"
    assert root.find("EventIdentification/EventID").get("csd-code") == "110112"


def test_received_instances_name_study_sop_classes_and_patient() -> None:
    root = etree.fromstring(_messages()["instances-received"].to_xml())
    assert root.find("EventIdentification").get("EventActionCode") == "C"
    study, patient = root.findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == "1.2.3.4"
    assert study.find("ParticipantObjectDescription/SOPClass").attrib == {
        "UID": CT, "NumberOfInstances": "3"}
    assert patient.findtext("ParticipantObjectName") == "Doe^Jane"
    roles = [p.find("RoleIDCode").get("csd-code") for p in root.findall("ActiveParticipant")]
    assert roles == ["110153", "110152"]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda root: root.remove(root.find("ActiveParticipant")) or
        root.remove(root.find("ActiveParticipant")),
        lambda root: root.find("EventIdentification").set("EventOutcomeIndicator", "2"),
        lambda root: root.find("EventIdentification").set("EventActionCode", "X"),
        lambda root: root.find("ActiveParticipant").attrib.pop("UserIsRequestor"),
        lambda root: root.find("EventIdentification/EventID").attrib.pop("originalText"),
        lambda root: root.insert(0, root.find("AuditSourceIdentification")),
        lambda root: root.find("ParticipantObjectIdentification").set(
            "ParticipantObjectTypeCode", "7"),
        lambda root: etree.SubElement(root, "Unexpected"),
    ],
    ids=["no-participant", "outcome", "action", "requestor", "code-meaning", "order",
         "object-type", "unknown-element"],
)
def test_schema_refuses_what_the_standard_does_not_allow(mutate) -> None:  # type: ignore[no-untyped-def]
    root = etree.fromstring(_messages()["instances-received"].to_xml())
    mutate(root)
    with pytest.raises(etree.DocumentInvalid):
        am.validate(etree.tostring(root))
