"""Command sets MIMIC encodes are byte for byte what pydicom encodes, for what pynetdicom builds."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom import dimse_messages
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode as pydicom_encode

from mimic_server.codec.command_set import encode_command_set, response_pdata

CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def _store_rq() -> C_STORE:
    p = C_STORE()
    p.MessageID, p.AffectedSOPClassUID, p.AffectedSOPInstanceUID = 7, CT, "1.2.3.45"
    p.Priority, p.DataSet = 2, BytesIO(b"\x08\x00\x18\x00")
    p.MoveOriginatorApplicationEntityTitle, p.MoveOriginatorMessageID = "MOVER", 3
    return p


def _store_rsp(status: int, comment: str | None = None) -> C_STORE:
    p = C_STORE()
    p.MessageIDBeingRespondedTo, p.AffectedSOPClassUID = 7, CT
    p.AffectedSOPInstanceUID, p.Status = "1.2.3.4", status
    if comment is not None:
        p.ErrorComment = comment
    return p


def _find_rsp(status: int, identifier: bool) -> C_FIND:
    p = C_FIND()
    p.MessageIDBeingRespondedTo, p.AffectedSOPClassUID, p.Status = 65535, FIND, status
    if identifier:
        p.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    return p


def _move_rsp() -> C_MOVE:
    p = C_MOVE()
    p.MessageIDBeingRespondedTo, p.AffectedSOPClassUID, p.Status = 2, FIND, 0xFF00
    p.NumberOfRemainingSuboperations, p.NumberOfCompletedSuboperations = 12, 3
    p.NumberOfFailedSuboperations, p.NumberOfWarningSuboperations = 0, 1
    return p


def _get_rq() -> C_GET:
    p = C_GET()
    p.MessageID, p.AffectedSOPClassUID, p.Priority = 1, FIND, 0
    p.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    return p


def _echo_rsp() -> C_ECHO:
    p = C_ECHO()
    p.MessageIDBeingRespondedTo, p.AffectedSOPClassUID, p.Status = 1, "1.2.840.10008.1.1", 0
    return p


PRIMITIVES = {
    "C-STORE-RQ": (_store_rq, dimse_messages.C_STORE_RQ),
    "C-STORE-RSP success": (lambda: _store_rsp(0x0000), dimse_messages.C_STORE_RSP),
    "C-STORE-RSP failure": (
        lambda: _store_rsp(0xA700, "index unavailable"), dimse_messages.C_STORE_RSP
    ),
    "C-STORE-RSP odd comment": (
        lambda: _store_rsp(0xC000, "odd"), dimse_messages.C_STORE_RSP
    ),
    "C-FIND-RSP pending": (lambda: _find_rsp(0xFF00, True), dimse_messages.C_FIND_RSP),
    "C-FIND-RSP success": (lambda: _find_rsp(0x0000, False), dimse_messages.C_FIND_RSP),
    "C-MOVE-RSP": (_move_rsp, dimse_messages.C_MOVE_RSP),
    "C-GET-RQ": (_get_rq, dimse_messages.C_GET_RQ),
    "C-ECHO-RSP": (_echo_rsp, dimse_messages.C_ECHO_RSP),
}


@pytest.mark.parametrize("name", PRIMITIVES)
def test_same_bytes_as_pydicom(name: str) -> None:
    make, message_class = PRIMITIVES[name]
    message = message_class()
    message.primitive_to_message(make())
    ours = encode_command_set(message.command_set)
    assert ours is not None
    assert ours == pydicom_encode(message.command_set, True, True)


def test_leaves_other_datasets_to_pydicom() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^John"
    assert encode_command_set(ds) is None
    command = Dataset()
    command.ErrorComment = "Zürich"  # not ASCII
    assert encode_command_set(command) is None


def _pynetdicom_pdata(primitive, message_class, max_pdu: int) -> list:  # type: ignore[no-untyped-def]
    message = message_class()
    message.primitive_to_message(primitive)
    return [p.presentation_data_value_list for p in message.encode_msg(5, max_pdu)]


RESPONSES = {
    "C-STORE-RSP success": (lambda: _store_rsp(0x0000), dimse_messages.C_STORE_RSP),
    "C-STORE-RSP warning": (lambda: _store_rsp(0xB000), dimse_messages.C_STORE_RSP),
    "C-FIND-RSP pending": (lambda: _find_rsp(0xFF00, True), dimse_messages.C_FIND_RSP),
    "C-FIND-RSP success": (lambda: _find_rsp(0x0000, False), dimse_messages.C_FIND_RSP),
    "C-FIND-RSP long identifier": (
        lambda: _with_identifier(_find_rsp(0xFF00, True), 5000), dimse_messages.C_FIND_RSP
    ),
    "C-FIND-RSP empty identifier": (
        lambda: _with_identifier(_find_rsp(0xFF00, True), 0), dimse_messages.C_FIND_RSP
    ),
}


def _with_identifier(primitive: C_FIND, size: int) -> C_FIND:
    primitive.Identifier = BytesIO(bytes(range(256)) * (size // 256) + b"\x01" * (size % 256))
    return primitive


@pytest.mark.parametrize("max_pdu", [0, 16384, 4096, 80])
@pytest.mark.parametrize("name", RESPONSES)
def test_responses_sent_as_pynetdicom_sends_them(name: str, max_pdu: int) -> None:
    """The same PDVs in the same order; a message that fits one PDU is sent in one."""
    make, message_class = RESPONSES[name]
    ours = response_pdata(make(), 5, max_pdu)
    assert ours is not None
    reference = _pynetdicom_pdata(make(), message_class, max_pdu)
    assert [pdv for p in ours for pdv in p.presentation_data_value_list] == [
        pdv for pdvs in reference for pdv in pdvs
    ]
    for pdata in ours:  # every PDU within the peer's maximum length
        size = sum(6 + len(value) - 1 for _, value in pdata.presentation_data_value_list)
        assert max_pdu == 0 or size <= max_pdu
    total = sum(6 + len(value) - 1 for pdvs in reference for _, value in pdvs)
    if max_pdu == 0 or total <= max_pdu:
        assert len(ours) == 1


def test_other_messages_are_left_to_pynetdicom() -> None:
    assert response_pdata(_store_rsp(0xA700, "index unavailable"), 5, 0) is None
    assert response_pdata(_store_rq(), 5, 0) is None
    assert response_pdata(_move_rsp(), 5, 0) is None
    assert response_pdata(_echo_rsp(), 5, 0) is None


def test_status_as_the_handlers_return_it() -> None:
    """Handlers return MIMIC's Status (an IntEnum): the direct path must take it."""
    from mimic_server.errors import Status

    primitive = _store_rsp(0x0000)
    primitive.Status = Status.SUCCESS
    ours = response_pdata(primitive, 5, 0)
    assert ours is not None
    assert [p.presentation_data_value_list for p in ours] == _pynetdicom_pdata(
        _store_rsp(0x0000), dimse_messages.C_STORE_RSP, 0
    )
