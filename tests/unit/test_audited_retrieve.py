"""The Begin Transferring DICOM Instances record of a C-GET / C-MOVE (``dimse/audited.py``)
names the patient of the matches (PS3.15 A.5.3.3: Patient is mandatory, one patient per
message) when they are one patient's; it named none."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from lxml import etree

from mimic_server.dimse.audited import audited_retrieve
from mimic_server.dimse.session import attach_session
from mimic_server.query.finder import InstanceRef
from mimic_server.security import audit
from mimic_server.security.audit import AuditLog
from mimic_server.security.audit_message import validate

CT = "1.2.840.10008.5.1.4.1.1.2"


class _Trail(AuditLog):
    """The records as the trail builds them, kept in memory."""

    def __init__(self) -> None:
        super().__init__(None)
        self.kept: list[tuple[tuple[str, str, str], int, dict[str, Any]]] = []
        self.sinks = [self]  # type: ignore[list-item]

    def write(self, entry: Any, details: dict[str, Any]) -> None:
        self.kept.append(((entry.event_code, "DCM", entry.event_name), entry.outcome,
                          {**details, "xml": entry.xml}))

    def close(self) -> None:
        pass


def _ref(n: int, patient: str, name: str) -> InstanceRef:
    return InstanceRef(CT, f"1.2.3.{n}", "1.2.840.10008.1.2.1", f"key-{n}", "0" * 64,
                       study_instance_uid="1.2.3", patient_id=patient, patient_name=name)


def _begun(refs: list[InstanceRef]) -> etree._Element:
    trail = _Trail()
    session = SimpleNamespace(retrieving=refs, peer_address="127.0.0.1:4000",
                              identity=SimpleNamespace(label="ws (abc)", trust_name="ws"),
                              calling_ae_title="WS1", user=None)
    assoc = SimpleNamespace(acceptor=SimpleNamespace(ae_title="MIMIC"))
    attach_session(assoc, session)  # type: ignore[arg-type]
    event = SimpleNamespace(assoc=assoc)

    def handler(event: Any) -> Iterator[Any]:
        yield len(refs)
        yield 0xFF00, object()

    answers = audited_retrieve(handler, trail, "C-GET")(event)
    next(answers)  # the number of sub-operations
    next(answers)  # the first object asked for: the transfer begins
    answers.close()
    [xml] = [d["xml"] for e, _, d in trail.kept if e[0] == audit.BEGIN_TRANSFERRING[0]]
    validate(xml)
    return etree.fromstring(xml)


def _patients(message: etree._Element) -> list[tuple[str | None, str | None]]:
    return [(o.get("ParticipantObjectID"), o.findtext("ParticipantObjectName"))
            for o in message.findall("ParticipantObjectIdentification")
            if o.find("ParticipantObjectIDTypeCode").get("csd-code") == "2"]


def test_begin_transferring_names_the_one_patient() -> None:
    message = _begun([_ref(1, "PID1", "DOE^JANE"), _ref(2, "PID1", "DOE^JANE")])
    assert _patients(message) == [("PID1", "DOE^JANE")]


def test_matches_of_several_patients_name_none() -> None:
    message = _begun([_ref(1, "PID1", "DOE^JANE"), _ref(2, "PID2", "ROE^RICHARD")])
    assert _patients(message) == []


def _failing(service: str, before: list[Any]) -> tuple[int | None, str]:
    """A handler that yields ``before`` and then fails unexpectedly, wrapped as app.py
    wraps it; the status the requestor is answered and the one its record says."""
    from mimic_server.dimse.unexpected import STATUS, guarded_stream

    trail = _Trail()
    session = SimpleNamespace(retrieving=None, peer_address="127.0.0.1:4000",
                              identity=SimpleNamespace(label="ws (abc)", trust_name="ws"),
                              calling_ae_title="WS1", user=None)
    assoc = SimpleNamespace(acceptor=SimpleNamespace(ae_title="MIMIC"))
    attach_session(assoc, session)  # type: ignore[arg-type]
    event = SimpleNamespace(assoc=assoc, move_destination="STORESCP")

    def handler(event: Any) -> Iterator[Any]:
        yield from before
        raise LookupError("a bug")

    preamble = {"C-GET": 1, "C-MOVE": 2}[service]
    answers = guarded_stream(audited_retrieve(handler, trail, service), service,
                             STATUS[service], preamble)(event)
    answered = None
    try:
        for item in answers:
            if isinstance(item, tuple) and len(item) == 2 and hasattr(item[0], "Status"):
                answered = int(item[0].Status)
    except RuntimeError:  # raised to pynetdicom, which answers 0xC514 (no destination yet)
        answered = 0xC514
    [record] = [d for e, _, d in trail.kept if e[0] == audit.INSTANCES_TRANSFERRED[0]]
    return answered, record["status"]


def test_an_unexpected_error_is_recorded_with_the_status_answered() -> None:
    """The record said 0xC311 (C-FIND's) whatever the C-GET or C-MOVE was answered."""
    assert _failing("C-GET", []) == (0xC411, "0xC411")
    assert _failing("C-MOVE", []) == (0xC514, "0xC514")
    assert _failing("C-MOVE", [("127.0.0.1", 104, {})]) == (0xC511, "0xC511")
