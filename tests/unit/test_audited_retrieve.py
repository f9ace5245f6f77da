"""The Begin Transferring DICOM Instances record of a C-GET / C-MOVE (``dimse/audited.py``)
names the patient of the matches (PS3.15 A.5.3.3: Patient is mandatory, one patient per
message) when they are one patient's; it named none. Matches of several patients are one
Begin Transferring and one DICOM Instances Transferred per patient, each with its own
studies, counts and failures: both named no patient at all."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from lxml import etree

from mimic_server.dimse.audited import audited_retrieve
from mimic_server.dimse.raw_send import StoredDataset
from mimic_server.dimse.retrieve import failed_suboperation
from mimic_server.dimse.session import attach_session
from mimic_server.query.finder import InstanceRef
from mimic_server.security import audit
from mimic_server.security.audit import AuditLog
from mimic_server.security.audit_message import validate
from mimic_server.storage.keys import new_object_key

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
    [message] = _begun_all(refs)
    return message


def _retrieving(refs: list[InstanceRef]) -> SimpleNamespace:
    """An association of workstation WS1 whose retrieve matched ``refs``."""
    session = SimpleNamespace(retrieving=refs, peer_address="127.0.0.1:4000",
                              identity=SimpleNamespace(label="ws (abc)", trust_name="ws"),
                              calling_ae_title="WS1", user=None)
    assoc = SimpleNamespace(acceptor=SimpleNamespace(ae_title="MIMIC"))
    attach_session(assoc, session)  # type: ignore[arg-type]
    return assoc


def _begun_all(refs: list[InstanceRef]) -> list[etree._Element]:
    trail = _Trail()
    assoc = _retrieving(refs)
    event = SimpleNamespace(assoc=assoc)

    def handler(event: Any) -> Iterator[Any]:
        yield len(refs)
        yield 0xFF00, object()

    answers = audited_retrieve(handler, trail, "C-GET")(event)
    next(answers)  # the number of sub-operations
    next(answers)  # the first object asked for: the transfer begins
    answers.close()
    return _messages(trail, audit.BEGIN_TRANSFERRING)


def _messages(trail: _Trail, event: tuple[str, str, str]) -> list[etree._Element]:
    xmls = [d["xml"] for e, _, d in trail.kept if e[0] == event[0]]
    for xml in xmls:
        validate(xml)
    return [etree.fromstring(xml) for xml in xmls]


def _patients(message: etree._Element) -> list[tuple[str | None, str | None]]:
    return [(o.get("ParticipantObjectID"), o.findtext("ParticipantObjectName"))
            for o in message.findall("ParticipantObjectIdentification")
            if o.find("ParticipantObjectIDTypeCode").get("csd-code") == "2"]


def test_begin_transferring_names_the_one_patient() -> None:
    message = _begun([_ref(1, "PID1", "DOE^JANE"), _ref(2, "PID1", "DOE^JANE")])
    assert _patients(message) == [("PID1", "DOE^JANE")]


def _studies(message: etree._Element) -> dict[str, str]:
    """Study Instance UID -> its Number of Instances (of its one SOP Class), as the message
    names them."""
    return {str(o.get("ParticipantObjectID")): ",".join(
                str(c.get("NumberOfInstances"))
                for c in o.findall("ParticipantObjectDescription/SOPClass"))
            for o in message.findall("ParticipantObjectIdentification")
            if o.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"}


def _stored(n: int, patient: str, name: str, study: str) -> InstanceRef:
    uid = f"1.2.3.{n}"
    return InstanceRef(CT, uid, "1.2.840.10008.1.2.1", new_object_key(study, study + ".1", uid),
                       "0" * 64, study_instance_uid=study, patient_id=patient,
                       patient_name=name)


def test_matches_of_several_patients_begin_one_transfer_each() -> None:
    """Each message names one patient and that patient's studies and counts; the one message
    named the studies of both and no patient."""
    refs = [_stored(1, "PID1", "DOE^JANE", "1.2.10"), _stored(2, "PID2", "ROE^RICHARD", "1.2.20"),
            _stored(3, "PID1", "DOE^JANE", "1.2.10"), _stored(4, "PID2", "ROE^RICHARD", "1.2.21")]
    messages = _begun_all(refs)
    named = sorted((_patients(m), _studies(m)) for m in messages)
    assert named == [([("PID1", "DOE^JANE")], {"1.2.10": "2"}),
                     ([("PID2", "ROE^RICHARD")], {"1.2.20": "1", "1.2.21": "1"})]


def _sent(ref: InstanceRef, taken: bool = True) -> StoredDataset:
    """A stored object pynetdicom was given and sent, taken by the destination or refused
    (with or without the ``answered-send`` fence entry)."""
    dataset = StoredDataset()
    dataset._mimic_ref = ref
    dataset._mimic_encoded = True
    dataset._mimic_refused = not taken
    dataset._mimic_answer = 0x0000 if taken else 0xA700
    return dataset


def _transferred(refs: list[InstanceRef], datasets: list[Any],
                 service: str = "C-GET") -> list[etree._Element]:
    """A whole C-GET (or C-MOVE) whose matches are ``refs`` and whose sub-operations are
    ``datasets``; its DICOM Instances Transferred messages."""
    trail = _Trail()
    assoc = _retrieving(refs)

    def handler(event: Any) -> Iterator[Any]:
        if service == "C-MOVE":
            yield "127.0.0.1", 104, {}
        yield len(refs)
        for dataset in datasets:
            yield 0xFF00, dataset

    event = SimpleNamespace(assoc=assoc, move_destination="STORESCP")
    for _ in audited_retrieve(handler, trail, service)(event):
        pass
    return _messages(trail, audit.INSTANCES_TRANSFERRED)


def _outcome(message: etree._Element) -> tuple[str | None, str | None]:
    identification = message.find("EventIdentification")
    return (identification.get("EventOutcomeIndicator"),
            identification.findtext("EventOutcomeDescription"))


def test_instances_of_several_patients_transferred_one_message_each() -> None:
    """Each patient's message has its studies, counts and failures: a stand-in (object
    unreadable: only its SOP Instance UID) and an object the destination refused are put on
    their patients. The one message named no patient, both studies and failed=2."""
    jane = [_stored(1, "PID1", "DOE^JANE", "1.2.10"), _stored(2, "PID1", "DOE^JANE", "1.2.10")]
    richard = [_stored(3, "PID2", "ROE^RICHARD", "1.2.20"),
               _stored(4, "PID2", "ROE^RICHARD", "1.2.20"),
               _stored(5, "PID2", "ROE^RICHARD", "1.2.21")]
    messages = _transferred([*jane, *richard], [
        _sent(jane[0]), _sent(richard[0]), _sent(jane[1]),
        failed_suboperation(richard[1]), _sent(richard[2], taken=False)])
    named = sorted((_patients(m), _studies(m), _outcome(m)) for m in messages)
    assert named == [
        ([("PID1", "DOE^JANE")], {"1.2.10": "2"},
         ("0", "service=C-GET; called AE=MIMIC; status=0xB000; instances=2; failed=0")),
        ([("PID2", "ROE^RICHARD")], {"1.2.20": "1"},
         ("4", "service=C-GET; called AE=MIMIC; status=0xB000; instances=1; failed=2")),
    ]


def test_one_patients_instances_are_one_message_as_before() -> None:
    """Every failure counted in the one message, which names the patient."""
    jane = [_stored(1, "PID1", "DOE^JANE", "1.2.10"), _stored(2, "PID1", "DOE^JANE", "1.2.11")]
    [message] = _transferred(jane, [_sent(jane[0]), failed_suboperation(jane[1])])
    assert _patients(message) == [("PID1", "DOE^JANE")]
    assert _studies(message) == {"1.2.10": "1"}
    assert _outcome(message) == (
        "4", "service=C-GET; called AE=MIMIC; status=0xB000; instances=1; failed=1")


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


def _moving(refs: list[InstanceRef] | None) -> tuple[SimpleNamespace, Any]:
    """A C-MOVE event of WS1 to STORESCP whose retrieve matched ``refs``, with the answer
    the fence attaches (``move_answer``)."""
    from mimic_server.dimse.move_answer import MoveAnswer

    assoc = _retrieving(refs or [])
    answer = MoveAnswer()
    assoc._mimic_move_answer = answer
    return SimpleNamespace(assoc=assoc, move_destination="STORESCP"), answer


def test_a_refused_move_is_recorded_when_refused_not_at_close() -> None:
    """pynetdicom drops the generator after a refusal without closing it, and a reference
    cycle could hold the record back until the garbage collector ran (a refused C-MOVE's
    record missing in a full suite). Written as the refusal is handed over, once."""
    trail = _Trail()
    event, answer = _moving(None)

    def handler(event: Any) -> Iterator[Any]:
        answer.status, answer.comment = 0xA900, "no unique key"
        yield None, None

    answers = audited_retrieve(handler, trail, "C-MOVE")(event)
    next(answers)
    [(_, outcome, details)] = trail.kept
    assert (outcome, details["status"], details["reason"]) == (4, "0xA900", "no unique key")
    answers.close()
    assert len(trail.kept) == 1


def test_an_unreachable_destination_is_recorded_when_answered_not_at_close() -> None:
    """The sub-association could not be established: pynetdicom sends the answer in place
    of its 0xA801 and drops the generator unread. Recorded as the answer goes out."""
    trail = _Trail()
    refs = [_ref(1, "PID1", "DOE^JANE"), _ref(2, "PID1", "DOE^JANE")]
    event, answer = _moving(refs)
    logged: list[str] = []

    def handler(event: Any) -> Iterator[Any]:
        answer.status, answer.comment = 0xA702, "destination unreachable"
        answer.failed = [ref.sop_instance_uid for ref in refs]
        answer.on_used = lambda: logged.append("unreachable")
        yield "127.0.0.1", 104, {}
        yield len(refs)
        yield 0xFF00, object()

    answers = audited_retrieve(handler, trail, "C-MOVE")(event)
    next(answers)  # the destination
    next(answers)  # the number of sub-operations: pynetdicom now associates, and fails
    assert trail.kept == []
    answer.used = True
    assert answer.on_used is not None
    answer.on_used()  # as move_answer's send_msg calls it, before the response goes
    assert logged == ["unreachable"]  # the handler's own still called
    [(_, outcome, details)] = trail.kept
    assert (outcome, details["status"], details["failed"]) == (audit.SERIOUS_FAILURE, "0xA702", 2)
    assert details["reason"] == "destination unreachable"
    answers.close()
    assert len(trail.kept) == 1
    assert not [e for e, _, _ in trail.kept if e == audit.BEGIN_TRANSFERRING]


@pytest.mark.parametrize("service", ["C-GET", "C-MOVE"])
def test_a_destination_refusing_every_sub_operation_is_recorded_with_0xa702(
        service: str) -> None:
    """pynetdicom answers 0xA702 when every sub-operation failed (``_get_scp`` /
    ``_move_scp``: as many failed as were announced); the record held no status, only
    failed=, where a refusal's says what the requestor was told. Outcome 4, as for any
    transfer with a failed sub-operation (conformance section 6)."""
    jane = [_stored(1, "PID1", "DOE^JANE", "1.2.10"), _stored(2, "PID1", "DOE^JANE", "1.2.10")]
    [message] = _transferred(jane, [_sent(jane[0], taken=False), _sent(jane[1], taken=False)],
                             service)
    assert _patients(message) == [("PID1", "DOE^JANE")]
    assert _outcome(message) == (
        "4", f"service={service}; called AE=MIMIC; status=0xA702; instances=0; failed=2")


def test_a_retrieve_sent_whole_is_recorded_with_success() -> None:
    jane = [_stored(1, "PID1", "DOE^JANE", "1.2.10")]
    [message] = _transferred(jane, [_sent(jane[0])])
    assert _outcome(message) == (
        "0", "service=C-GET; called AE=MIMIC; status=0x0000; instances=1; failed=0")


def test_a_sub_operation_taken_with_a_warning_is_0xb000(monkeypatch: pytest.MonkeyPatch) -> None:
    """A destination that took an object with a Warning (0xB000 Coercion of Data Elements):
    pynetdicom counts it a Warning sub-operation and answers 0xB000; the object was sent."""
    monkeypatch.setattr("mimic_server.dimse.audited.answered_send_in_use", lambda: True)
    jane = [_stored(1, "PID1", "DOE^JANE", "1.2.10"), _stored(2, "PID1", "DOE^JANE", "1.2.10")]
    warned = _sent(jane[1])
    warned._mimic_answer = 0xB000
    [message] = _transferred(jane, [_sent(jane[0]), warned])
    assert _studies(message) == {"1.2.10": "2"}
    assert _outcome(message) == (
        "0", "service=C-GET; called AE=MIMIC; status=0xB000; instances=2; failed=0")


def test_a_cancel_records_no_final_status_it_did_not_answer() -> None:
    """The association went away (or pynetdicom answered a C-CANCEL itself) mid-retrieve:
    the wrapper cannot tell what was answered; the record stays as it was, outcome 4."""
    trail = _Trail()
    jane = [_stored(1, "PID1", "DOE^JANE", "1.2.10"), _stored(2, "PID1", "DOE^JANE", "1.2.10")]
    assoc = _retrieving(jane)

    def handler(event: Any) -> Iterator[Any]:
        yield len(jane)
        yield 0xFF00, _sent(jane[0])
        yield 0xFF00, _sent(jane[1])

    answers = audited_retrieve(handler, trail, "C-GET")(SimpleNamespace(assoc=assoc))
    next(answers)
    next(answers)
    next(answers)
    answers.close()
    [message] = _messages(trail, audit.INSTANCES_TRANSFERRED)
    outcome, described = _outcome(message)
    assert outcome == "4" and "status=" not in str(described)
