"""A C-STORE-RQ whose PDVs disagree with the negotiated presentation contexts (PS3.7 9.3.1,
PS3.8 9.3.5 and Annex E: a request goes on a context of its SOP Class, and every fragment of
a message on its command's context), written by hand on a real ``mimic serve``: refused
(0x0122) or aborted, nothing stored. Taken as it came, each was stored under the transfer
syntax of a context it was not sent on."""

from __future__ import annotations

import io
import json
import struct
import time
from typing import Any

import pydicom
import pytest
from pydicom.filereader import read_dataset
from pydicom.uid import generate_uid
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.presentation import build_context

from tests.data import ct_small
from tests.data_sets import encoded
from tests.e2e.test_slow_clients import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    P_DATA_TF,
    raw_tls,
    read_pdu,
    tls,
)
from tests.support import MimicProcess, associate, association_request, wait_for

VERIFICATION, CT = "1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"


def _c_store(command_context: int, data_context: int, sop_instance_uid: str,
             originator: bool = False) -> bytes:
    """P-DATA-TF PDUs of a CT C-STORE-RQ: its command on one context, its data set on
    another; with ``originator``, as a C-MOVE's sub-operation (a command set MIMIC's own
    C-STORE path leaves to pynetdicom's decoder)."""
    ds = pydicom.dcmread(ct_small())
    ds.SOPInstanceUID = sop_instance_uid
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = sop_instance_uid
    request.Priority = 2
    if originator:
        request.MoveOriginatorApplicationEntityTitle = "PACS"
        request.MoveOriginatorMessageID = 7
    request.DataSet = io.BytesIO(encoded(ds, implicit=True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdus = b""
    for pdu in message.encode_msg(command_context, 16382):
        for _, value in pdu.presentation_data_value_list:
            context = command_context if value[0] & 1 else data_context
            pdv = struct.pack(">LB", len(value) + 1, context) + value
            pdus += struct.pack(">BBL", P_DATA_TF, 0, len(pdv)) + pdv
    return pdus


@pytest.mark.parametrize("originator", [False, True], ids=["", "move-originator"])
@pytest.mark.parametrize(("command_context", "data_context", "answer"), [
    (1, 1, 0x0122),  # a CT Image Storage request on the Verification context
    (3, 1, A_ABORT),  # the command on the CT context, its data set on Verification's
    (3, 99, A_ABORT),  # its data set on a context never proposed
], ids=["on-verification", "data-on-another-context", "data-on-no-context"])
def test_a_request_off_its_presentation_context_is_refused(
    server: MimicProcess, command_context: int, data_context: int, answer: int,
    originator: bool,
) -> None:
    verification = build_context(VERIFICATION, [IMPLICIT])
    verification.context_id = 1
    ct = build_context(CT, [IMPLICIT])
    ct.context_id = 3
    uid = generate_uid()
    before = server.instance_count(), len(server.stored_objects())
    with raw_tls(server) as sock:
        sock.sendall(association_request([verification, ct], "MODALITY1", "MIMIC"))
        assert read_pdu(sock)[0] == A_ASSOCIATE_AC
        sock.sendall(_c_store(command_context, data_context, uid, originator))
        pdu_type, body = read_pdu(sock)
    if answer == A_ABORT:
        assert pdu_type == A_ABORT
    else:
        assert pdu_type == P_DATA_TF
        response = read_dataset(io.BytesIO(bytes(body[6:])), True, True)
        assert response.Status == answer
    assert (server.instance_count(), len(server.stored_objects())) == before
    assert not server._query("SELECT 1 FROM instances WHERE sop_instance_uid = :u", u=uid)


def test_a_request_proposing_no_presentation_context_is_rejected(server: MimicProcess) -> None:
    """An A-ASSOCIATE-RQ without a Presentation Context item (PS3.8 9.3.2 asks for one or
    more) was accepted: an association that could carry nothing held one of the limited
    slots until the network timeout. Now A-ASSOCIATE-RJ 1/1/1 (permanent, service user, no
    reason given), as for a request none of whose contexts is granted; logged."""
    logged = server.log_mark()
    with raw_tls(server) as sock:
        sock.sendall(association_request([], "MODALITY1", "MIMIC"))
        pdu_type, body = read_pdu(sock)
    assert pdu_type == A_ASSOCIATE_RJ
    assert (body[1], body[2], body[3]) == (1, 1, 1)
    rejected = [e for e in server.log_entries()[logged:]
                if e.get("message") == "association rejected"]
    assert [e["reason"] for e in rejected] == ["no presentation context proposed"]


def _item(item_type: int, value: bytes) -> bytes:
    """One item of an A-ASSOCIATE-RQ (PS3.8 9.3.2): type, reserved, 16-bit length, value."""
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _proposed(context_id: int, abstract_syntax: str, transfer_syntaxes: list[str]) -> bytes:
    """A Presentation Context item (0x20) as a requestor may write it, also without any
    transfer syntax sub-item, which pynetdicom's own encoder would not write."""
    return _item(0x20, bytes([context_id, 0, 0, 0]) + _item(0x30, abstract_syntax.encode())
                 + b"".join(_item(0x40, ts.encode()) for ts in transfer_syntaxes))


def _request(contexts: bytes, user_items: bytes = b"", protocol_version: int = 1) -> bytes:
    """An A-ASSOCIATE-RQ from MODALITY1 to MIMIC with these context items and, in its User
    Information after the maximum length and the Implementation Class UID, ``user_items``
    (SCP/SCU Role Selection, User Identity...)."""
    user = (_item(0x51, struct.pack(">L", 16382)) + _item(0x52, b"1.2.826.0.1.3680043.9.3811")
            + user_items)
    body = (struct.pack(">HH", protocol_version, 0) + b"MIMIC".ljust(16) + b"MODALITY1".ljust(16)
            + bytes(32) + _item(0x10, b"1.2.840.10008.3.1.1.1") + contexts + _item(0x50, user))
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def _answered_contexts(body: bytes) -> dict[int, int]:
    """Context ID -> result of each Presentation Context (AC) item of an A-ASSOCIATE-AC."""
    results, offset = {}, 68
    while offset < len(body):
        item_type, _, length = struct.unpack(">BBH", body[offset:offset + 4])
        if item_type == 0x21:
            results[body[offset + 4]] = body[offset + 6]
        offset += 4 + length
    return results


def _role(uid: str, scu: int, scp: int) -> bytes:
    return _item(0x54, struct.pack(">H", len(uid)) + uid.encode() + bytes([scu, scp]))


@pytest.mark.parametrize(("contexts", "roles", "results"), [
    pytest.param(_proposed(1, VERIFICATION, [IMPLICIT]) + _proposed(3, CT, []), b"",
                 {1: 0, 3: 4}, id="a-context-without-transfer-syntax"),
    pytest.param(_proposed(1, VERIFICATION, [IMPLICIT]) + _proposed(3, CT, [IMPLICIT]),
                 _role(CT, 0, 0), {1: 0, 3: 0}, id="a-role-item-proposing-no-role"),
])
def test_a_malformed_proposal_is_answered_not_aborted(
    server: MimicProcess, contexts: bytes, roles: bytes, results: dict[int, int]
) -> None:
    """A context proposed without a transfer syntax, or an SCP/SCU Role Selection item
    proposing neither role: the association was admitted, then encoding the
    A-ASSOCIATE-AC raised, the peer got an A-ABORT and the log an ERROR, 'unexpected error
    in the DICOM upper layer'. Now the A-ASSOCIATE-AC answers: the context without transfer
    syntax refused with result 4 (transfer-syntaxes-not-supported), the role item left out
    (default roles), the other contexts accepted; nothing is logged at ERROR."""
    logged = server.log_mark()
    with raw_tls(server) as sock:
        sock.sendall(_request(contexts, roles))
        pdu_type, body = read_pdu(sock)
        assert pdu_type == A_ASSOCIATE_AC, f"PDU type 0x{pdu_type:02X}"
        assert _answered_contexts(body) == results
    assert not [e for e in server.log_entries()[logged:] if e.get("level") == "ERROR"]


@pytest.mark.parametrize(("contexts", "user_items", "reason"), [
    pytest.param(_proposed(2, VERIFICATION, [IMPLICIT]), b"",
                 "a presentation context ID that is not odd", id="even-context-id"),
    pytest.param(_proposed(1, VERIFICATION, [IMPLICIT]),
                 _item(0x58, bytes([9, 0]) + struct.pack(">H", 3) + b"bob" + bytes(2)),
                 "a user identity type other than 1 to 5", id="user-identity-type-9"),
])
def test_a_request_with_a_value_pynetdicom_refuses_is_the_peers_error(
    server: MimicProcess, contexts: bytes, user_items: bytes, reason: str
) -> None:
    """A presentation context ID that is even, a User Identity type outside 1 to 5: the
    request decodes, but pynetdicom refuses the value as it takes the request in (AE-6) and
    the association is aborted, as before. That was logged at ERROR as "unexpected error in
    the DICOM upper layer", a bug of the archive to report; it is the peer's error: one
    WARNING naming the certificate and what was wrong, and no ERROR."""
    logged = server.log_mark()
    with raw_tls(server) as sock:
        sock.sendall(_request(contexts, user_items))
        pdu_type, _ = read_pdu(sock)
    assert pdu_type == A_ABORT

    def said() -> list[dict]:
        return [e for e in server.log_entries()[logged:]
                if e.get("message") == "association request not understood: aborted"]

    assert wait_for(lambda: len(said()) == 1), server.log()[-2000:]
    assert said()[0]["reason"] == reason
    assert said()[0]["identity"].startswith("modality1 ")
    assert not [e for e in server.log_entries()[logged:] if e.get("level") == "ERROR"]


def _rejection_audits(server: MimicProcess) -> list[tuple[int, str]]:
    """(outcome, XML) of each User Authentication audit record that is not a success, oldest
    first: the trail in its file (embedded) or table (PostgreSQL, in the order of its ids: a
    SELECT without ORDER BY may return them in any order, and did in a full suite)."""
    trail = server.data_dir / "audit.jsonl"
    if trail.exists():
        records = [json.loads(line) for line in trail.read_text().splitlines() if line]
        return [(r["outcome"], r["xml"]) for r in records
                if r["event"] == "110114" and r["outcome"] != 0]
    return [(outcome, xml) for outcome, xml in server._query(
        "SELECT outcome, xml FROM audit_events WHERE event_code = '110114' AND outcome <> 0 "
        "ORDER BY id")]


@pytest.mark.parametrize("version", [0x0002, 0x0000, 0x8000])
def test_a_request_without_protocol_version_1_is_rejected_logged_and_audited(
    server: MimicProcess, version: int
) -> None:
    """An A-ASSOCIATE-RQ whose Protocol Version lacks bit 0 (version 1, PS3.8 9.3.2): still
    A-ASSOCIATE-RJ 1/2/2 (rejected-permanent, service-provider ACSE, protocol version not
    supported, PS3.8 Table 9-21), which pynetdicom's state machine used to send itself with
    neither a log line nor an audit record; now logged as "association rejected" and audited
    (User Authentication, outcome 4) like every other rejection."""
    logged = server.log_mark()
    audits = len(_rejection_audits(server))
    with raw_tls(server) as sock:
        sock.sendall(_request(_proposed(1, VERIFICATION, [IMPLICIT]),
                              protocol_version=version))
        pdu_type, body = read_pdu(sock)
    assert pdu_type == A_ASSOCIATE_RJ
    assert (body[1], body[2], body[3]) == (1, 2, 2)

    def rejected() -> list[dict]:
        return [e for e in server.log_entries()[logged:]
                if e.get("message") == "association rejected"]

    assert wait_for(lambda: len(rejected()) == 1), server.log()[-2000:]
    assert rejected()[0]["reason"] == "protocol version 1 not in the request"
    assert rejected()[0]["reject"] == "1/2/2"
    assert rejected()[0]["identity"].startswith("modality1 ")

    def audited() -> list[int]:
        return [outcome for outcome, xml in _rejection_audits(server)[audits:]
                if "protocol version 1 not in the request" in xml]

    assert wait_for(lambda: len(audited()) == 1)
    assert audited() == [4]


def test_a_request_announcing_a_later_version_beside_version_1_is_accepted(
    server: MimicProcess,
) -> None:
    """Bit 0 set beside another (0x0003): PS3.8 9.3.2 has a receiver that implements only
    version 1 test bit 0 alone. pynetdicom compared the field with 0x0001 and rejected it."""
    with raw_tls(server) as sock:
        sock.sendall(_request(_proposed(1, VERIFICATION, [IMPLICIT]), protocol_version=0x0003))
        pdu_type, body = read_pdu(sock)
    assert pdu_type == A_ASSOCIATE_AC, f"PDU type 0x{pdu_type:02X}"
    assert _answered_contexts(body) == {1: 0}


def _echo_on(assoc: Any, context_id: int, sop_class: str) -> int | None:
    """A C-ECHO-RQ with this Affected SOP Class UID on this context; its response's Status
    (None: no response, the association aborted). The requestor's reactor is paused, as
    pynetdicom's own send_c_echo pauses it, so that it does not take the response."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        request = C_ECHO()
        request.MessageID = 7
        request.AffectedSOPClassUID = sop_class
        assoc.dimse.send_msg(request, context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return None if response is None else int(response.Status)


@pytest.mark.parametrize(("on", "sop_class", "reason"), [
    pytest.param(CT, VERIFICATION, "the request's presentation context is not Verification's",
                 id="verification-on-a-storage-context"),
    pytest.param(VERIFICATION, CT, "the request's SOP Class is not Verification",
                 id="ct-storage-class-on-verification"),
    pytest.param(VERIFICATION, "1.2.826.0.1.3680043.8.498.99",
                 "the request's SOP Class is not Verification", id="unknown-class"),
])
def test_a_c_echo_off_the_verification_sop_class_is_refused(
    server: MimicProcess, on: str, sop_class: str, reason: str
) -> None:
    """A C-ECHO on a Storage presentation context was answered Success, where a C-STORE on
    the Verification context gets 0x0122; a C-ECHO whose Affected SOP Class UID is CT Image
    Storage or one pynetdicom does not know ran another service class (or none), and the
    association was aborted with nothing in the log. Now each is answered 0x0122 (Refused:
    SOP Class not supported, PS3.7 9.3.1), with one WARNING naming the peer, and the
    association goes on."""
    logged = server.log_mark()
    assoc = associate(server.port, tls(server))
    assert assoc.is_established
    try:
        context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == on)
        assert _echo_on(assoc, context.context_id, sop_class) == 0x0122
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0  # the association goes on
    finally:
        if assoc.is_established:
            assoc.release()

    def refused() -> list[dict]:
        return [e for e in server.log_entries()[logged:] if e.get("message") == "C-ECHO refused"]

    assert wait_for(lambda: len(refused()) == 1), server.log()[-2000:]
    assert refused()[0]["level"] == "WARNING" and refused()[0]["reason"] == reason
    assert refused()[0]["status"] == "0x0122" and refused()[0]["peer"].startswith("127.0.0.1:")
    assert refused()[0]["identity"].startswith("modality1 ")
    assert not [e for e in server.log_entries()[logged:] if e.get("level") == "ERROR"]
