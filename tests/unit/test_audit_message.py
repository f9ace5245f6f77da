"""Every audit message MIMIC builds validates against the PS3.15 A.5.1 schema; the schema
itself refuses what the standard does not allow."""

from __future__ import annotations

import base64
import dataclasses
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from mimic_server.security import audit_message as am
from tests import audit_message_lxml as reference

CT = "1.2.840.10008.5.1.4.1.1.2"
WHEN = datetime(2026, 12, 1, 21, 4, 5, 678901, tzinfo=UTC)


def _messages(m: Any = am) -> dict[str, Any]:
    """One message of each kind, built by ``m``: the module under test, or the lxml builder
    it replaced (``tests/audit_message_lxml.py``)."""
    archive = m.Participant("MIMIC", False, (m.DESTINATION,), alternative_user_id="pid=42",
                            network_access_point="archive.example.org",
                            network_access_point_type=m.MACHINE_NAME)
    modality = m.Participant("CT01", True, (m.SOURCE,), user_name="CN=ct-room-1",
                             network_access_point="10.0.0.5")
    study = m.StudyObject("1.2.3.4", {CT: 3}, ("A123",))
    patient = m.PatientObject("PID-1", "Doe^Jane")
    one = m.StudyObject("1.2.3.6", {CT: 1}, instances={CT: ("1.2.3.6.1",)}, life_cycle=1)
    return {
        "application-start": m.application_activity(
            m.Participant("MIMIC", False, (m.APPLICATION,)), True, "MIMIC"),
        "application-stop": m.application_activity(
            m.Participant("MIMIC", False, (m.APPLICATION,)), False, "MIMIC",
            launcher=m.Participant("operator", True, (m.APPLICATION_LAUNCHER,))),
        "security-alert": m.security_alert(
            m.Participant("MIMIC", False), m.NODE_AUTHENTICATION, m.MINOR_FAILURE,
            "10.0.0.9", "untrusted certificate, 17 connections in 60 s", "MIMIC"),
        "user-authentication": m.user_authentication(
            m.Participant("jane@example.org", True, network_access_point="10.0.0.5"),
            archive, True, m.SERIOUS_FAILURE, "MIMIC", "token has expired"),
        "query": m.query(modality, archive, "1.2.840.10008.5.1.4.1.2.2.1",
                         b"\x08\x00\x52\x00\x06\x00STUDY ", "1.2.840.10008.1.2",
                         m.SUCCESS, "MIMIC"),
        "empty-query": m.query(modality, archive, "1.2.840.10008.5.1.4.1.2.2.1", b"",
                               "1.2.840.10008.1.2", m.SUCCESS, "MIMIC"),
        "begin-transferring": m.begin_transferring(
            archive, modality, [study], patient, m.SUCCESS, "MIMIC"),
        "instances-received": m.instances_transferred(
            modality, archive, [study], patient, m.SUCCESS, "MIMIC", received=True),
        "instance-received-again": m.instances_transferred(
            modality, archive, [one], m.PatientObject(""), m.SUCCESS, "MIMIC", received=True,
            updated=True, others=[m.Participant("jane", True)]),
        "instances-sent": m.instances_transferred(
            archive, modality, [study, m.StudyObject("1.2.3.5")], None, m.MINOR_FAILURE,
            "MIMIC", received=False),
        "instances-accessed": m.instances_accessed(
            m.Participant("jane@example.org", True), "R", [study], patient, m.SUCCESS, "MIMIC"),
        "export": m.export(archive, m.Participant("WORKSTATION", False, (m.DESTINATION,)),
                           [study], patient, m.SUCCESS, "MIMIC"),
        "site": m.AuditMessage(m.STUDY_DELETED, m.SUCCESS, [archive], "MIMIC", action="D",
                               site="clinic-1", event_types=(m.LOGIN, m.LOGOUT),
                               outcome_description="a & b"),
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


def test_a_long_identifier_is_cut_and_its_length_given() -> None:
    """An Identifier may be 8 MiB: the Query message carries its first 64 KiB, and says how
    long it was; one of exactly 64 KiB is whole, with no length."""
    archive = am.Participant("MIMIC", False)
    modality = am.Participant("CT01", True)
    identifier = b"\x08\x00\x30\x10" + bytes(range(256)) * (32 * 1024)  # 8 MiB + 4
    xml = am.query(modality, archive, "1.2.840.10008.5.1.4.1.2.2.1", identifier,
                   "1.2.840.10008.1.2", am.SUCCESS, "MIMIC").to_xml()
    am.validate(xml)
    assert len(xml) < 90_000
    obj = etree.fromstring(xml).find("ParticipantObjectIdentification")
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery")) == identifier[:65536]
    details = {d.get("type"): base64.b64decode(d.get("value"))
               for d in obj.findall("ParticipantObjectDetail")}
    assert details == {"TransferSyntax": b"1.2.840.10008.1.2",
                       "IdentifierLength": str(len(identifier)).encode()}
    whole = am.query(modality, archive, "1.2.840.10008.5.1.4.1.2.2.1", identifier[:65536],
                     "1.2.840.10008.1.2", am.SUCCESS, "MIMIC").to_xml()
    obj = etree.fromstring(whole).find("ParticipantObjectIdentification")
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery")) == identifier[:65536]
    assert [d.get("type") for d in obj.findall("ParticipantObjectDetail")] == ["TransferSyntax"]


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


@pytest.mark.parametrize("name", sorted(_messages()))
def test_the_text_is_the_one_lxml_wrote(name: str) -> None:
    """The messages are written as text: byte for byte what the lxml tree serialised to."""
    written = dataclasses.replace(_messages()[name], when=WHEN).to_xml()
    assert written == dataclasses.replace(_messages(reference)[name], when=WHEN).to_xml()


_BASE64 = re.compile(r'(?<= value=")[A-Za-z0-9+/=]*(?=")')
_NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")

#: Any text, with what XML escapes or refuses (controls, U+FFFE/U+FFFF, surrogates) often.
_TEXT = st.text(st.one_of(
    st.sampled_from("&<>\"'\t\n\r \x00\x01\x0b\x1f\x7f\x85\u2028\ufffe\uffff\ud800]é😀"),
    st.characters(),
), max_size=12)


def _built(m: Any, values: list[str], query: bytes) -> str:
    user_id, alternative, user_name, address, patient_id, name, study, accession, sop, \
        description = values
    requestor = m.Participant(user_id, True, (m.SOURCE,), alternative_user_id=alternative,
                              user_name=user_name, network_access_point=address)
    archive = m.Participant("MIMIC", False, (m.DESTINATION,), network_access_point=address,
                            network_access_point_type=m.MACHINE_NAME)
    studies = [m.StudyObject(study, {CT: 1, sop: 2}, (accession,), instances={sop: (sop,)})]
    received = m.instances_transferred(requestor, archive, studies,
                                       m.PatientObject(patient_id, name), m.SUCCESS, user_id,
                                       received=True, others=[m.Participant(name, True)])
    asked = m.query(requestor, archive, sop, query, study, m.MINOR_FAILURE, address)
    alert = m.security_alert(archive, m.LOGIN, m.SERIOUS_FAILURE, study, description,
                             accession)
    messages = [received, asked, alert,
                m.AuditMessage(m.Code(sop, name, description), m.SUCCESS, [requestor],
                               user_id, action="E", outcome_description=description,
                               site=name)]
    return "\n".join(dataclasses.replace(message, when=WHEN).to_xml() for message in messages)


@settings(max_examples=300, deadline=None)
@given(st.lists(_TEXT, min_size=10, max_size=10), st.binary(max_size=20))
def test_any_text_is_written_as_lxml_wrote_it(values: list[str], query: bytes) -> None:
    """Every free-text field, with what needs an escape and what XML cannot carry: the same
    text as lxml wrote; where lxml refused a string (ValueError; UnicodeEncodeError for a lone
    surrogate), what lxml wrote of it with U+FFFD for each character XML cannot carry. A
    refused message was a lost record (a Patient's Name with a control character in it)."""
    written = _built(am, values, query)
    try:
        assert written == _built(reference, values, query)
    except ValueError:
        cleaned = [_NOT_IN_XML.sub("\ufffd", v) for v in values]
        expected = _built(reference, cleaned, query)
        # The same elements, but where a value is carried in base64 (a ParticipantObjectDetail),
        # which can carry it as it was, and ordered by the values as they were (SOP Classes).
        tags = sorted(_BASE64.sub("", written).split("><"))
        assert tags == sorted(_BASE64.sub("", expected).split("><"))
        etree.fromstring(f"<all>{written}</all>")  # well-formed XML
