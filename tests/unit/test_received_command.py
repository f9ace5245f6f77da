"""C-STORE-RQs (and C-ECHO-RQs) assembled by MIMIC (``received-command``) reach the handler
exactly as pynetdicom's own receive path delivers them; anything else still takes
pynetdicom's path."""

from __future__ import annotations

import logging
import queue
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_ECHO_RQ, C_FIND_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import P_DATA

from mimic_server.codec.command_set import (
    CheckedUID,
    EchoRequestCommand,
    StoreRequestCommand,
    StoreResponseCommand,
    checked_uid_setter,
    decode_store_request,
)
from mimic_server.dimse.receiving import (
    MAX_COMMAND_SET,
    ReceiveLimits,
    ReceivingCommandSet,
    ReceivingDataSet,
    receive_in_bounded_memory,
)
from tests.spooled import dul_events

CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
DATA_SET = bytes(range(256)) * 40  # 10 KiB, several fragments at small PDU lengths


def _store(message_id: int = 7, instance: str = "1.2.3.45", **extra: Any) -> C_STORE:
    p = C_STORE()
    p.MessageID, p.AffectedSOPClassUID, p.AffectedSOPInstanceUID = message_id, CT, instance
    p.Priority, p.DataSet = 1, BytesIO(DATA_SET)
    for name, value in extra.items():
        setattr(p, name, value)
    return p


def _find() -> C_FIND:
    p = C_FIND()
    p.MessageID, p.AffectedSOPClassUID, p.Priority = 3, FIND, 2
    p.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    return p


def _pdata(primitive: Any, max_pdu: int, context_id: int = 1) -> list[P_DATA]:
    message = (C_STORE_RQ if isinstance(primitive, C_STORE) else C_FIND_RQ)()
    message.primitive_to_message(primitive)
    return list(message.encode_msg(context_id, max_pdu))


class _TakenAtOnce(queue.Queue):  # type: ignore[type-arg]
    """The association thread taking each message as soon as it is queued: requests one
    after another, each answered before the next (``test_one_request_at_a_time.py`` has
    a peer that does not wait)."""

    taken: list[tuple[int, Any]]

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.taken.append(item)


def _acceptor(tmp_path: Path, fast: bool) -> tuple[Association, list[Any]]:
    assoc = Association(AE(), "acceptor")
    seen: list[Any] = []
    assoc.bind(evt.EVT_DIMSE_RECV, lambda event: seen.append(event.message))
    assoc.dimse.msg_queue.__class__ = _TakenAtOnce
    assoc.dimse.msg_queue.taken = []
    receive_in_bounded_memory(assoc, ReceiveLimits(1 << 30, tmp_path), store_requests=fast)
    return assoc, seen


def _received(assoc: Association) -> list[tuple[int, Any]]:
    waiting = assoc.dimse.msg_queue
    found: list[tuple[int, Any]] = []
    if isinstance(waiting, _TakenAtOnce):
        found, waiting.taken = waiting.taken, []
    while True:
        try:
            found.append(waiting.get_nowait())
        except queue.Empty:
            return found


def _fields(primitive: Any) -> dict[str, Any]:
    names = ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
             "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID")
    fields = {name: getattr(primitive, name, None) for name in names}
    # a UID decoded here is a CheckedUID, a UID all the same
    fields["types"] = [UID if isinstance(v, UID) else type(v) for v in fields.values()]
    fields["class"] = type(primitive)
    data = getattr(primitive, "DataSet", None) or getattr(primitive, "Identifier", None)
    fields["data"] = bytes(data.getbuffer()) if data is not None else None
    fields["data_class"] = type(data)
    fields["context"] = primitive._context_id
    fields["path"] = (primitive._dataset_path, primitive._dataset_file)
    return fields


def _both(tmp_path: Path, pdatas: list[P_DATA]) -> tuple[Any, Any]:
    """What pynetdicom's path and MIMIC's deliver for the same P-DATA."""
    results = []
    for fast in (False, True):
        assoc, seen = _acceptor(tmp_path / str(fast), fast)
        for pdata in pdatas:
            assoc.dimse.receive_primitive(pdata)
        results.append((assoc, seen))
    return results[0], results[1]


@pytest.mark.parametrize("max_pdu", [0, 16, 100, 4096, 16382])
def test_a_store_request_arrives_as_pynetdicom_delivers_it(tmp_path: Path, max_pdu: int) -> None:
    (library, library_seen), (mimic, mimic_seen) = _both(tmp_path, _pdata(_store(), max_pdu, 5))
    expected, got = _received(library), _received(mimic)
    assert len(expected) == len(got) == 1
    assert expected[0][0] == got[0][0] == 5
    assert _fields(got[0][1]) == _fields(expected[0][1])
    assert isinstance(got[0][1].DataSet, ReceivingDataSet)
    assert isinstance(mimic_seen[0].command_set, StoreRequestCommand)  # the fast path ran
    # what an EVT_DIMSE_RECV handler sees: the same message class and command set
    assert type(mimic_seen[0]) is type(library_seen[0]) is C_STORE_RQ
    assert list(mimic_seen[0].command_set) == list(library_seen[0].command_set)
    assert mimic_seen[0].command_set.MessageID == 7
    assert mimic.dimse.message is None and library.dimse.message is None
    assert dul_events(mimic) == dul_events(library) == []


@pytest.mark.parametrize("primitive", [
    _store(MoveOriginatorApplicationEntityTitle="MOVER", MoveOriginatorMessageID=3),
    _store(instance="1.02.3"),  # not conformant: pynetdicom warns, so it decodes
    _find(),
], ids=["move-originator", "non-conformant-uid", "c-find"])
def test_anything_else_takes_pynetdicoms_path(tmp_path: Path, primitive: Any) -> None:
    (library, _), (mimic, mimic_seen) = _both(tmp_path, _pdata(primitive, 100))
    expected, got = _received(library), _received(mimic)
    assert len(expected) == len(got) == 1
    assert _fields(got[0][1]) == _fields(expected[0][1])
    assert not isinstance(mimic_seen[0].command_set, StoreRequestCommand)


def test_a_data_set_before_its_command_aborts_as_before(tmp_path: Path) -> None:
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((1, b"\x02" + DATA_SET[:100]))
    (library, _), (mimic, _) = _both(tmp_path, [pdata])
    assert _received(mimic) == _received(library) == []
    assert dul_events(mimic) == dul_events(library) == ["Evt19"]


def test_store_requests_one_after_another_each_arrive(tmp_path: Path) -> None:
    pdatas = [*_pdata(_store(1, "1.2.3.1"), 4096), *_pdata(_find(), 4096),
              *_pdata(_store(2, "1.2.3.2"), 4096)]
    assoc, _ = _acceptor(tmp_path, fast=True)
    for pdata in pdatas:
        assoc.dimse.receive_primitive(pdata)
    got = _received(assoc)
    assert [type(p) for _, p in got] == [C_STORE, C_FIND, C_STORE]
    assert [p.MessageID for _, p in got] == [1, 3, 2]
    assert all(p.DataSet.getvalue() == DATA_SET for _, p in got if type(p) is C_STORE)


def test_two_messages_in_one_pdata_both_arrive(tmp_path: Path) -> None:
    combined = P_DATA()
    for primitive in (_store(1, "1.2.3.1"), _store(2, "1.2.3.2")):
        for pdata in _pdata(primitive, 0):
            combined.presentation_data_value_list.extend(pdata.presentation_data_value_list)
    assoc, _ = _acceptor(tmp_path, fast=True)
    assoc.dimse.receive_primitive(combined)
    assert [p.AffectedSOPInstanceUID for _, p in _received(assoc)] == ["1.2.3.1", "1.2.3.2"]


def test_the_decoded_command_set_is_pydicoms() -> None:
    message = C_STORE_RQ()
    message.primitive_to_message(_store())
    encoded = b"".join(bytes(v)[1:] for p in message.encode_msg(1, 0)
                       for _, v in p.presentation_data_value_list if v[0] & 1)
    command = decode_store_request(encoded)
    assert command is not None
    dataset = decode(BytesIO(encoded), True, True)
    for element in dataset:
        assert getattr(command, element.keyword) == element.value
        assert isinstance(getattr(command, element.keyword), type(element.value))
    assert isinstance(command.AffectedSOPClassUID, UID)
    assert command.to_json_dict() == dataset.to_json_dict()  # anything else: pydicom's


@pytest.mark.parametrize("change", [
    lambda b: b[:-2],  # truncated
    lambda b: b + b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00",  # an unexpected element
    lambda b: b.replace(b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x00",
                        b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x01"),  # no data set
])
def test_what_it_does_not_know_it_leaves_to_pydicom(change: Any) -> None:
    message = C_STORE_RQ()
    message.primitive_to_message(_store())
    encoded = b"".join(bytes(v)[1:] for p in message.encode_msg(1, 0)
                       for _, v in p.presentation_data_value_list if v[0] & 1)
    assert decode_store_request(encoded) is not None
    changed = change(encoded)
    assert changed != encoded
    assert decode_store_request(changed) is None


def test_a_checked_uid_is_taken_as_checked_and_any_other_is_checked() -> None:
    from pynetdicom.utils import set_uid

    setter = checked_uid_setter(set_uid)
    checked = CheckedUID("1.2.3.4")
    assert setter(checked, "Affected SOP Instance UID") is checked
    assert setter("1.2.3.4", "Affected SOP Instance UID") == "1.2.3.4"
    assert type(setter("1.2.3.4", "Affected SOP Instance UID")) is UID
    with pytest.raises(ValueError):
        setter("1" * 65, "Affected SOP Instance UID")
    assert setter(None, "Affected SOP Instance UID") is None


def _pdata_tf(pdvs: list[tuple[int, bytes]]) -> bytearray:
    from pynetdicom.pdu import P_DATA_TF

    primitive = P_DATA()
    primitive.presentation_data_value_list.extend(pdvs)
    return bytearray(P_DATA_TF(primitive).encode())


@pytest.mark.parametrize("pdvs", [
    [(1, b"\x03" + b"c" * 80)],
    [(1, b"\x03" + b"c" * 80), (1, b"\x02" + DATA_SET)],
    [(3, b"\x00" + DATA_SET), (5, b"\x02"), (7, b"\x01" + b"x" * 7)],
    [],
], ids=["command", "command-and-data-set", "three", "empty"])
def test_a_pdata_pdu_read_here_gives_pynetdicoms_primitive(pdvs: list[tuple[int, bytes]]) -> None:
    from pynetdicom.pdu import P_DATA_TF

    from mimic_server.net.reactor import _pdata_items, _ReceivedPData

    encoded = _pdata_tf(pdvs)
    library = P_DATA_TF()
    library.decode(bytes(encoded))
    items = _pdata_items(encoded)
    assert items is not None
    got = _ReceivedPData(items).to_primitive().presentation_data_value_list
    expected = library.to_primitive().presentation_data_value_list
    assert [(cid, bytes(data)) for cid, data in got] == expected


@pytest.mark.parametrize("damage", [
    lambda b: b + b"\x00\x00",  # a trailing piece shorter than an item header
    lambda b: b + b"\x00\x00\x00\x00\x01",  # an item of length 0 (no context ID)
    lambda b: b[:-1],  # the last item runs past the PDU
])
def test_a_malformed_pdata_pdu_is_left_to_pynetdicom(damage: Any) -> None:
    from pynetdicom.pdu import P_DATA_TF

    from mimic_server.net.reactor import _pdata_items

    damaged = bytearray(damage(bytes(_pdata_tf([(1, b"\x03" + b"c" * 80)]))))
    assert _pdata_items(damaged) is None
    with pytest.raises(Exception):  # noqa: B017 - pynetdicom's own failure: Evt19, A-ABORT
        P_DATA_TF().decode(bytes(damaged))


# -- the answers to C-GET sub-operations ---------------------------------------------------------


def _store_rsp(status: int = 0x0000, instance: str | None = "1.2.3.45",
               **extra: Any) -> C_STORE:
    p = C_STORE()
    p.MessageIDBeingRespondedTo, p.AffectedSOPClassUID, p.Status = 9, CT, status
    p.AffectedSOPInstanceUID = instance
    for name, value in extra.items():
        setattr(p, name, value)
    return p


def _response_fields(primitive: Any) -> dict[str, Any]:
    names = ("MessageIDBeingRespondedTo", "AffectedSOPClassUID", "AffectedSOPInstanceUID",
             "Status", "ErrorComment", "OffendingElement", "is_valid_response")
    fields = {name: getattr(primitive, name) for name in names}
    fields["types"] = [UID if isinstance(v, UID) else type(v) for v in fields.values()]
    fields["class"] = type(primitive)
    fields["context"] = primitive._context_id
    fields["path"] = (primitive._dataset_path, primitive._dataset_file)
    return fields


def _responses(tmp_path: Path, primitive: C_STORE, max_pdu: int,
               monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, list[Any]]:
    """What pynetdicom's path and MIMIC's (no EVT_DIMSE_RECV handler) deliver, and what
    MIMIC's decoder answered."""
    from pynetdicom import _config

    from mimic_server.dimse import receiving

    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")  # as the server runs
    answers: list[Any] = []
    real = receiving.decode_store_response
    monkeypatch.setattr(receiving, "decode_store_response",
                        lambda encoded: answers.append(real(encoded)) or answers[-1])
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    pdatas = list(message.encode_msg(3, max_pdu))
    delivered = []
    for fast in (False, True):
        assoc = Association(AE(), "acceptor")
        receive_in_bounded_memory(assoc, ReceiveLimits(1 << 30, tmp_path), store_requests=fast)
        for pdata in pdatas:
            assoc.dimse.receive_primitive(pdata)
        got = _received(assoc)
        assert len(got) == 1 and got[0][0] == 3
        assert assoc.dimse.message is None and dul_events(assoc) == []
        delivered.append(got[0][1])
    return delivered[0], delivered[1], answers


@pytest.mark.parametrize("max_pdu", [0, 16, 4096])
@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700])
def test_a_store_response_arrives_as_pynetdicom_delivers_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_pdu: int, status: int
) -> None:
    library, mimic, answers = _responses(tmp_path, _store_rsp(status), max_pdu, monkeypatch)
    assert answers and answers[-1] is not None  # decoded here
    assert _response_fields(mimic) == _response_fields(library)


@pytest.mark.parametrize("primitive", [
    _store_rsp(0xA700, ErrorComment="disk full"),
    _store_rsp(0xC000, OffendingElement=[0x00100010]),
    _store_rsp(0x0000, instance=None),
    _store_rsp(0x0000, instance="1.02.3"),  # not conformant: pynetdicom's to warn about
], ids=["error-comment", "offending-element", "no-instance-uid", "non-conformant-uid"])
def test_any_other_store_response_takes_pynetdicoms_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, primitive: C_STORE
) -> None:
    library, mimic, answers = _responses(tmp_path, primitive, 0, monkeypatch)
    assert answers == [None]
    assert _response_fields(mimic) == _response_fields(library)


def test_an_evt_dimse_recv_handler_sees_the_response_pynetdicom_would_give(
    tmp_path: Path,
) -> None:
    messages = []
    for fast in (False, True):
        assoc, seen = _acceptor(tmp_path / str(fast), fast)
        message = C_STORE_RSP()
        message.primitive_to_message(_store_rsp())
        for pdata in message.encode_msg(3, 16):
            assoc.dimse.receive_primitive(pdata)
        [(_, response)] = _received(assoc)
        assert response.Status == 0x0000 and response.MessageIDBeingRespondedTo == 9
        messages.append(seen)
    [library], [mimic] = messages
    assert type(mimic) is type(library) is C_STORE_RSP
    assert isinstance(mimic.command_set, StoreResponseCommand)  # the fast path ran
    assert list(mimic.command_set) == list(library.command_set)
    assert mimic.command_set.Status == 0 and mimic.context_id == library.context_id == 3


# -- C-ECHO requests -----------------------------------------------------------------------------


def _echo(message_id: int = 4, sop_class: str | None = "1.2.840.10008.1.1") -> C_ECHO:
    p = C_ECHO()
    p.MessageID, p.AffectedSOPClassUID = message_id, sop_class
    return p


def _echo_fields(primitive: Any) -> dict[str, Any]:
    names = ("MessageID", "MessageIDBeingRespondedTo", "AffectedSOPClassUID", "Status",
             "ErrorComment", "is_valid_request")
    fields = {name: getattr(primitive, name, None) for name in names}
    fields["types"] = [UID if isinstance(v, UID) else type(v) for v in fields.values()]
    fields["class"] = type(primitive)
    fields["context"] = primitive._context_id
    fields["path"] = (primitive._dataset_path, primitive._dataset_file)
    return fields


def _echoes(tmp_path: Path, primitive: C_ECHO, max_pdu: int,
            monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, list[Any], list[Any]]:
    """What pynetdicom's path and MIMIC's deliver for one C-ECHO-RQ, what MIMIC's decoder
    answered, and the messages an ``EVT_DIMSE_RECV`` handler saw on each path."""
    from mimic_server.dimse import receiving

    answers: list[Any] = []
    real = receiving.decode_echo_request
    monkeypatch.setattr(receiving, "decode_echo_request",
                        lambda encoded: answers.append(real(encoded)) or answers[-1])
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    pdatas = list(message.encode_msg(7, max_pdu))
    delivered, messages = [], []
    for fast in (False, True):
        assoc, seen = _acceptor(tmp_path / str(fast), fast)
        for pdata in pdatas:
            assoc.dimse.receive_primitive(pdata)
        got = _received(assoc)
        assert len(got) == 1 and got[0][0] == 7
        assert assoc.dimse.message is None and dul_events(assoc) == []
        delivered.append(got[0][1])
        messages.append(seen)
    return delivered[0], delivered[1], answers, messages


@pytest.mark.parametrize("max_pdu", [0, 16, 4096])
def test_an_echo_request_arrives_as_pynetdicom_delivers_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_pdu: int
) -> None:
    library, mimic, answers, ([library_seen], [mimic_seen]) = _echoes(
        tmp_path, _echo(), max_pdu, monkeypatch)
    assert answers and answers[-1] is not None  # decoded here
    assert isinstance(answers[-1], EchoRequestCommand)
    assert _echo_fields(mimic) == _echo_fields(library)
    assert type(mimic_seen) is type(library_seen) is C_ECHO_RQ
    assert list(mimic_seen.command_set) == list(library_seen.command_set)
    assert mimic_seen.context_id == library_seen.context_id == 7


def test_an_echo_request_pydicom_must_judge_takes_pynetdicoms_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = _echo(sop_class="1.02.3")  # not conformant: pynetdicom's to warn about
    library, mimic, answers, _ = _echoes(tmp_path, odd, 0, monkeypatch)
    assert answers == [None]
    assert _echo_fields(mimic) == _echo_fields(library)


def test_a_store_request_after_an_echo_is_still_taken_here(tmp_path: Path) -> None:
    message = C_ECHO_RQ()
    message.primitive_to_message(_echo())
    pdatas = [*message.encode_msg(7, 0), *_pdata(_store(), 0, 5)]
    (library, _), (mimic, _) = _both(tmp_path, pdatas)
    ours, theirs = _received(mimic), _received(library)
    assert [type(p) for _, p in ours] == [type(p) for _, p in theirs] == [C_ECHO, C_STORE]
    assert _fields(ours[1][1]) == _fields(theirs[1][1])
    assert isinstance(ours[1][1].AffectedSOPClassUID, CheckedUID)  # decoded here, not by pydicom


@pytest.mark.parametrize("fast", [False, True])
def test_a_command_set_past_its_bound_aborts_once_and_is_not_kept(
    tmp_path: Path, fast: bool
) -> None:
    """pynetdicom's path and MIMIC's alike: command fragments past 64 KiB are dropped, one
    A-ABORT is asked for (Evt19), and nothing is delivered, even once one is marked last."""
    assoc, seen = _acceptor(tmp_path, fast)
    fragment = b"\x01" + bytes(16 * 1024)  # a command fragment, not the last
    for _ in range(8):
        pdata = P_DATA()
        pdata.presentation_data_value_list.append([1, fragment])
        assoc.dimse.receive_primitive(pdata)
        assert assoc.dimse.message.encoded_command_set.tell() <= MAX_COMMAND_SET
    last = P_DATA()
    last.presentation_data_value_list.append([1, b"\x03" + bytes(100)])
    assoc.dimse.receive_primitive(last)
    assert dul_events(assoc) == ["Evt19"]
    assert _received(assoc) == [] and seen == []


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("value", [b"", b"\x03", b"\x03" + bytes(8), b"\x03\xff\xff"],
                         ids=["no control header", "empty", "no Command Field", "garbage"])
def test_a_pdv_that_does_not_decode_asks_for_an_abort(
    tmp_path: Path, fast: bool, value: bytes
) -> None:
    """Never an exception out of the DUL thread (pynetdicom's own path raised: the thread
    died, the connection dropped without an A-ABORT): an A-ABORT is asked for (Evt19)."""
    assoc, seen = _acceptor(tmp_path, fast)
    pdata = P_DATA()
    pdata.presentation_data_value_list.append([1, value])
    assoc.dimse.receive_primitive(pdata)
    assert dul_events(assoc) == ["Evt19"]
    assert _received(assoc) == [] and seen == []


def test_a_fault_of_mimics_own_decoder_is_an_error_with_its_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not the peer's fault: a WARNING "cannot be decoded" would hide a regression that
    aborts every C-STORE association (review). ERROR, naming where it was raised."""
    from mimic_server.dimse import receiving

    # a decoder that raises in MIMIC's own code (TypeError: fromhex takes a str)
    monkeypatch.setattr(receiving, "decode_store_request", bytes.fromhex)
    assoc, _seen = _acceptor(tmp_path, True)
    with caplog.at_level(logging.WARNING, logger="mimic_server.dimse.receiving"):
        assoc.dimse.receive_primitive(_pdata(_store(), 0)[0])  # its command set
    assert dul_events(assoc) == ["Evt19"]
    [record] = caplog.records
    assert (record.levelno, record.error) == (logging.ERROR, "TypeError")  # type: ignore[attr-defined]
    assert record.where[-1].startswith(  # type: ignore[attr-defined]
        "mimic_server/dimse/receiving.py:_receive_store_fragments:")


@pytest.mark.parametrize("fast", [False, True])
def test_a_command_set_at_its_bound_is_taken(tmp_path: Path, fast: bool) -> None:
    assoc, _seen = _acceptor(tmp_path, fast)
    for pdata in _pdata(_store(), 16382):
        assoc.dimse.receive_primitive(pdata)
    assert dul_events(assoc) == []
    assert len(_received(assoc)) == 1


def test_a_command_set_is_taken_to_its_bound_and_not_a_byte_past() -> None:
    at = ReceivingCommandSet()
    at.write(bytes(MAX_COMMAND_SET - 1))
    at.write(b"\x00")
    assert at.getvalue() == bytes(MAX_COMMAND_SET) and not at.too_large
    past = ReceivingCommandSet()
    past.write(bytes(MAX_COMMAND_SET))
    past.write(b"\x00")
    assert past.too_large and past.abort_due and past.getvalue() == b""


@pytest.mark.parametrize("fast", [False, True])
def test_a_command_set_too_long_after_a_whole_message_in_the_same_p_data_aborts(
    tmp_path: Path, fast: bool
) -> None:
    """One P-DATA: a whole C-STORE-RQ, then the first fragment of the next message's
    command set, already past the bound: its abort is not lost with the message it left.
    (pynetdicom's path drops what follows a message's end in its P-DATA: its abort comes
    with the fragments after.)"""
    assoc, _seen = _acceptor(tmp_path, fast)
    whole = [pdv for p in _pdata(_store(), 0) for pdv in p.presentation_data_value_list]
    pdata = P_DATA()
    pdata.presentation_data_value_list.extend(whole)
    pdata.presentation_data_value_list.append([1, b"\x01" + bytes(MAX_COMMAND_SET + 1)])
    assoc.dimse.receive_primitive(pdata)
    for _ in range(5):
        more = P_DATA()
        more.presentation_data_value_list.append([1, b"\x01" + bytes(16 * 1024)])
        assoc.dimse.receive_primitive(more)
    assert len(_received(assoc)) == 1  # the whole one
    assert dul_events(assoc) == ["Evt19"]
