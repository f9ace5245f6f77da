"""Command sets MIMIC encodes are byte for byte what pydicom encodes, for what pynetdicom builds."""

from __future__ import annotations

import logging
from collections.abc import Callable
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom import dimse_messages
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode as pydicom_encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from mimic_server.codec.command_set import (
    EncodedPData,
    direct_response_sender,
    encode_command_set,
    encoded_pdus,
    message_parts,
    response_pdata,
)
from mimic_server.net.pdata_batches import sending_batches

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


def _echo_rsp(status: int = 0) -> C_ECHO:
    p = C_ECHO()
    p.MessageIDBeingRespondedTo, p.AffectedSOPClassUID, p.Status = 1, "1.2.840.10008.1.1", status
    return p


def _echo_rsp_with_comment() -> C_ECHO:
    p = _echo_rsp(0x0122)
    p.ErrorComment = "refused"
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
    "C-ECHO-RSP": (_echo_rsp, dimse_messages.C_ECHO_RSP),
    "C-ECHO-RSP refused": (lambda: _echo_rsp(0x0122), dimse_messages.C_ECHO_RSP),
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
    assert response_pdata(_echo_rsp_with_comment(), 5, 0) is None


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


def _get_rsp(status: int, remaining: int | None) -> C_GET:
    p = C_GET()
    p.MessageIDBeingRespondedTo, p.AffectedSOPClassUID, p.Status = 3, FIND, status
    p.NumberOfRemainingSuboperations, p.NumberOfCompletedSuboperations = remaining, 3
    p.NumberOfFailedSuboperations, p.NumberOfWarningSuboperations = 0, 0
    return p


def _store_rq_of(size: int, originator: bool) -> C_STORE:
    p = _store_rq()
    p.DataSet = BytesIO(bytes(range(256)) * (size // 256) + b"\x07" * (size % 256))
    if not originator:
        p.MoveOriginatorApplicationEntityTitle = p.MoveOriginatorMessageID = None
    return p


BATCHED = {
    **RESPONSES,
    "C-GET-RSP pending": (lambda: _get_rsp(0xFF00, 5), dimse_messages.C_GET_RSP),
    "C-GET-RSP final": (lambda: _get_rsp(0x0000, None), dimse_messages.C_GET_RSP),
    "C-MOVE-RSP pending": (_move_rsp, dimse_messages.C_MOVE_RSP),
    "C-STORE-RQ sub-operation of C-MOVE": (
        lambda: _store_rq_of(40_000, True), dimse_messages.C_STORE_RQ),
    "C-STORE-RQ sub-operation of C-GET": (
        lambda: _store_rq_of(525_001, False), dimse_messages.C_STORE_RQ),
    "C-STORE-RQ odd AE title": (lambda: _with_originator(_store_rq(), "MOV"),
                                dimse_messages.C_STORE_RQ),
}


def _with_originator(primitive: C_STORE, title: str) -> C_STORE:
    primitive.MoveOriginatorApplicationEntityTitle = title
    return primitive


def _pdus(encoded: bytes) -> list[list[tuple[int, bytes]]]:
    """The PDV lists of concatenated P-DATA-TF PDUs, as pynetdicom decodes each."""
    pdus, offset = [], 0
    while offset < len(encoded):
        length = int.from_bytes(encoded[offset + 2 : offset + 6], "big")
        pdu = P_DATA_TF()
        pdu.decode(encoded[offset : offset + 6 + length])
        pdus.append([(item.context_id, item.data) for item in pdu.presentation_data_value_items])
        offset += 6 + length
    return pdus


@pytest.mark.parametrize("max_pdu", [0, 16384, 4096, 80])
@pytest.mark.parametrize("name", BATCHED)
def test_messages_encoded_ahead_are_what_pynetdicom_writes(name: str, max_pdu: int) -> None:
    """The same PDVs in the same order, every PDU within the peer's maximum; cut into
    several PDUs, the very bytes pynetdicom's ``P_DATA_TF`` writes."""
    make, message_class = BATCHED[name]
    parts = message_parts(make())
    assert parts is not None
    encoded = encoded_pdus(*parts, 5, max_pdu)
    assert encoded is not None
    ours, count = encoded
    message = message_class()
    message.primitive_to_message(make())
    reference = list(message.encode_msg(5, max_pdu))
    pdus = _pdus(ours)
    assert len(pdus) == count
    assert [pdv for pdu in pdus for pdv in pdu] == [
        pdv for p in reference for pdv in p.presentation_data_value_list]
    for pdu in pdus:
        assert max_pdu == 0 or sum(6 + len(data) - 1 for _, data in pdu) <= max_pdu
    if count > 1 or len(reference) == 1:
        assert ours == b"".join(P_DATA_TF(p).encode() for p in reference)


def test_messages_with_a_comment_or_identifier_are_left_to_pynetdicom() -> None:
    assert message_parts(_store_rsp(0xA700, "index unavailable")) is None
    get_failed = _get_rsp(0xA702, 0)
    get_failed.Identifier = BytesIO(b"\x08\x00\x58\x11\x00\x00\x00\x00")
    assert message_parts(get_failed) is None
    assert message_parts(_get_rq()) is None
    assert message_parts(_echo_rsp_with_comment()) is None
    assert encoded_pdus(b"\x00" * 10, b"", 5, 6) is None  # pynetdicom refuses such a PDU


class _RawSocket:
    """A socket with a timeout, as pynetdicom's are: it takes a few bytes per ``send``."""

    def __init__(self, per_send: int = 3, fails: bool = False) -> None:
        self.per_send = per_send
        self.fails = fails
        self.received = bytearray()
        self.sends = 0

    def send(self, data: memoryview) -> int:
        if self.fails:
            raise ConnectionResetError
        self.sends += 1
        self.received += data[:self.per_send]
        return min(self.per_send, len(data))


class _Transport:
    """What the write of a batch touches of pynetdicom's ``AssociationSocket``."""

    def __init__(self, raw: _RawSocket) -> None:
        from queue import SimpleQueue

        self.socket = raw
        self.assoc = _Association()
        self.event_queue: SimpleQueue[str] = SimpleQueue()


class _Association:
    """What ``evt.trigger`` touches of an association, with one EVT_DATA_SENT handler."""

    def __init__(self) -> None:
        self.data_sent: list[bytes] = []
        self.abort = self._abort_nonblocking = self._abort_blocking = None

    def get_handlers(self, event: object) -> list[tuple[object, None]]:
        from pynetdicom import evt

        if event is not evt.EVT_DATA_SENT:
            return []
        return [(lambda e: self.data_sent.append(e.data), None)]


class _Dul:
    """What the DUL's P-DATA actions touch: the queue, the socket, ``_send``."""

    def __init__(self, primitive: object, socket: bool = True) -> None:
        from queue import SimpleQueue

        self.to_provider_queue: SimpleQueue[object] = SimpleQueue()
        self.to_provider_queue.put(primitive)
        self.socket = _Transport(_RawSocket()) if socket else None
        self.sent_pdus: list[P_DATA_TF] = []

    def _send(self, pdu: P_DATA_TF) -> None:
        self.sent_pdus.append(pdu)


@pytest.mark.parametrize(("state", "action"), [("Sta6", "DT_1"), ("Sta8", "AR_7")])
def test_the_dul_writes_a_batch_at_once_and_anything_else_as_pynetdicom(
    state: str, action: str, caplog: pytest.LogCaptureFixture
) -> None:
    from pynetdicom import fsm

    send = sending_batches(state)(getattr(fsm, action))
    dul = _Dul(EncodedPData(b"pdus and more", 2))
    assert send(dul) == state
    assert dul.socket is not None
    # written whole, a part at a time as the socket takes it, as AssociationSocket.send does
    assert bytes(dul.socket.socket.received) == b"pdus and more" and dul.sent_pdus == []
    assert dul.socket.socket.sends == 5
    assert dul.socket.assoc.data_sent == [b"pdus and more"]
    assert dul.socket.event_queue.empty()
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((5, b"\x03abcd"))
    dul = _Dul(pdata)
    assert send(dul) == state
    assert dul.socket is not None and not dul.socket.socket.received
    assert [p.encode() for p in dul.sent_pdus] == [P_DATA_TF(pdata).encode()]
    closed = _Dul(EncodedPData(b"pdus", 1), socket=False)
    caplog.set_level(logging.WARNING, logger="pynetdicom")  # whatever an earlier test set
    assert send(closed) == state
    assert "closed connection" in caplog.text
    # a connection that fails mid-write: the transport's Evt17, as pynetdicom's send puts
    reset = _Dul(EncodedPData(b"pdus", 1))
    assert reset.socket is not None
    reset.socket.socket.fails = True
    assert send(reset) == state
    assert reset.socket.event_queue.get_nowait() == "Evt17"
    assert reset.socket.assoc.data_sent == []


class _Provider:
    """What ``direct_response_sender`` touches of a DIMSE provider: its association (no
    handlers bound), its DUL's ``send_pdu`` and the peer's maximum PDU length."""

    def __init__(self, max_pdu: int = 16384) -> None:
        self.maximum_pdu_size = max_pdu
        self.queued: list[object] = []
        self.dul = type("Dul", (), {"send_pdu": lambda _, p: self.queued.append(p)})()
        self.assoc = type("Assoc", (), {"get_handlers": lambda _, e: []})()


def _sender(monkeypatch: pytest.MonkeyPatch, batching: bool = True) -> tuple[
        Callable[[object, object, int], None], list[tuple[object, int]]]:
    """The fence's ``send_msg`` over a stand-in of pynetdicom's, which records its calls and
    queues what it sends behind anything the DUL was given before (``_Provider.queued``)."""
    from mimic_server.codec import command_set

    monkeypatch.setattr(command_set, "batches", batching)
    theirs: list[tuple[object, int]] = []

    def pynetdicoms(dimse: _Provider, primitive: object, context_id: int) -> None:
        theirs.append((primitive, context_id))
        dimse.queued.append(("pynetdicom", primitive))

    return direct_response_sender(pynetdicoms), theirs


def _wire(queued: list[object]) -> list[tuple[int, bytes]]:
    """The PDVs of everything queued for the DUL, in order."""
    pdvs: list[tuple[int, bytes]] = []
    for item in queued:
        if isinstance(item, EncodedPData):
            pdvs += [pdv for pdu in _pdus(item.encoded) for pdv in pdu]
        else:
            pdvs += list(item.presentation_data_value_list)  # type: ignore[attr-defined]
    return pdvs


def _their_pdvs(*messages: tuple[object, type]) -> list[tuple[int, bytes]]:
    pdvs = []
    for primitive, message_class in messages:
        message = message_class()  # type: ignore[operator]
        message.primitive_to_message(primitive)
        pdvs += [pdv for pdu in message.encode_msg(5, 16384)
                 for pdv in pdu.presentation_data_value_list]
    return pdvs


def test_a_pending_c_get_response_goes_out_with_the_next_sub_operation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    send, theirs = _sender(monkeypatch)
    dimse = _Provider()
    send(dimse, _get_rsp(0xFF00, 5), 5)
    assert dimse.queued == []  # held: nothing follows it yet
    send(dimse, _store_rq_of(525_001, False), 5)
    assert len(dimse.queued) == 1 and theirs == []  # one batch, one write
    batch = dimse.queued[0]
    assert isinstance(batch, EncodedPData) and batch.pdus == len(_pdus(batch.encoded))
    assert _wire(dimse.queued) == _their_pdvs(
        (_get_rsp(0xFF00, 5), dimse_messages.C_GET_RSP),
        (_store_rq_of(525_001, False), dimse_messages.C_STORE_RQ))
    # The last pending response and the final one: together, in that order.
    send(dimse, _get_rsp(0xFF00, 0), 5)
    send(dimse, _get_rsp(0x0000, None), 5)
    assert len(dimse.queued) == 2
    assert _wire(dimse.queued[1:]) == _their_pdvs(
        (_get_rsp(0xFF00, 0), dimse_messages.C_GET_RSP),
        (_get_rsp(0x0000, None), dimse_messages.C_GET_RSP))


def test_a_held_response_goes_first_when_the_next_message_takes_another_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    send, theirs = _sender(monkeypatch)
    dimse = _Provider()
    send(dimse, _get_rsp(0xFF00, 5), 5)
    failed = _get_rsp(0xA702, 0)  # with an identifier: pynetdicom's own path
    failed.Identifier = BytesIO(b"\x08\x00\x58\x11\x00\x00\x00\x00")
    send(dimse, failed, 5)
    assert theirs == [(failed, 5)]
    assert len(dimse.queued) == 2 and dimse.queued[1] == ("pynetdicom", failed)  # after it
    assert _wire(dimse.queued[:1]) == _their_pdvs(
        (_get_rsp(0xFF00, 5), dimse_messages.C_GET_RSP))


def test_at_most_one_response_is_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sub-operations that send nothing (an object unreadable, or without a presentation
    context) are each followed by a pending response: the second goes out with the first at
    once, so a C-GET whose sub-operations all fail still reports them as it goes."""
    send, _ = _sender(monkeypatch)
    dimse = _Provider()
    for remaining in (5, 4, 3, 2, 1):
        send(dimse, _get_rsp(0xFF00, remaining), 5)
    assert len(dimse.queued) == 2  # 5 with 4, 3 with 2; 1 held for what follows
    assert _wire(dimse.queued) == _their_pdvs(
        *((_get_rsp(0xFF00, r), dimse_messages.C_GET_RSP) for r in (5, 4, 3, 2)))
    send(dimse, _get_rsp(0x0000, None), 5)
    assert _wire(dimse.queued[2:]) == _their_pdvs(
        (_get_rsp(0xFF00, 1), dimse_messages.C_GET_RSP),
        (_get_rsp(0x0000, None), dimse_messages.C_GET_RSP))


def test_only_a_c_get_pending_response_is_held_and_only_in_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    send, _ = _sender(monkeypatch)
    dimse = _Provider()
    send(dimse, _move_rsp(), 5)  # C-MOVE: its sub-operations go over another association
    send(dimse, _find_rsp(0xFF00, True), 5)
    assert len(dimse.queued) == 2
    send, theirs = _sender(monkeypatch, batching=False)
    unbatched = _Provider()
    send(unbatched, _get_rsp(0xFF00, 5), 5)  # sent at once, pynetdicom's way
    assert len(unbatched.queued) == 1 and len(theirs) == 1
