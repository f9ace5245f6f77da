"""A peer that sends requests without waiting for their responses: no Asynchronous
Operations Window is negotiated, so one request may wait beside the one being handled; the
next aborts the association and nothing of it is kept. Requests still queued when the
connection ends release their spool files then."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA

from mimic_server.dimse import receiving
from mimic_server.dimse.receiving import (
    ReceivingDataSet,
    discard_partial,
)
from mimic_server.storage import anonymous
from tests.spooled import acceptor, dul_events

CT = "1.2.840.10008.5.1.4.1.1.2"
#: 40 KiB: spooled past the 4 KiB these tests keep in memory.
DATA_SET = bytes(range(256)) * 160


class _Spools:
    """Every spool file opened, to see which are still open."""

    def __init__(self) -> None:
        self.opened: list[Any] = []

    def open_anonymous(self, directory: Path) -> tuple[Any, bool]:
        spool, nameable = anonymous.open_anonymous(directory)
        self.opened.append(spool)
        return spool, nameable

    def open(self) -> int:
        return sum(not spool.closed for spool in self.opened)


@pytest.fixture
def spools(monkeypatch: pytest.MonkeyPatch) -> _Spools:
    opened = _Spools()
    monkeypatch.setattr(receiving, "open_anonymous", opened.open_anonymous)
    return opened


def _acceptor(tmp_path: Path, fast: bool) -> Association:
    return acceptor(tmp_path, CT, fast)


def _store(message_id: int, max_pdu: int = 16384, **extra: Any) -> list[P_DATA]:
    request = C_STORE()
    request.MessageID, request.AffectedSOPClassUID, request.Priority = message_id, CT, 1
    request.AffectedSOPInstanceUID = f"1.2.3.{message_id}"
    request.DataSet = BytesIO(DATA_SET)
    for name, value in extra.items():
        setattr(request, name, value)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return list(message.encode_msg(1, max_pdu))


def _echo(message_id: int) -> list[P_DATA]:
    request = C_ECHO()
    request.MessageID, request.AffectedSOPClassUID = message_id, "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(request)
    return list(message.encode_msg(1, 16384))


def _store_response(message_id: int) -> list[P_DATA]:
    response = C_STORE()
    response.MessageIDBeingRespondedTo, response.AffectedSOPClassUID = message_id, CT
    response.AffectedSOPInstanceUID, response.Status = f"1.2.3.{message_id}", 0
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    return list(message.encode_msg(1, 16384))


def _feed(assoc: Association, pdatas: list[P_DATA]) -> None:
    for pdata in pdatas:
        assoc.dimse.receive_primitive(pdata)


def _waiting(assoc: Association) -> list[Any]:
    return [primitive for _, primitive in assoc.dimse.msg_queue.queue]


# The fast path (MIMIC's C-STORE-RQ assembly) and pynetdicom's own (a move originator
# sends a C-STORE-RQ only pydicom decodes).
PATHS = [
    pytest.param(True, {}, id="mimic-path"),
    pytest.param(False, {}, id="pynetdicom-path"),
    pytest.param(True, {"MoveOriginatorApplicationEntityTitle": "MOVER",
                        "MoveOriginatorMessageID": 3}, id="pynetdicom-path-from-mimic"),
]


@pytest.mark.parametrize(("fast", "extra"), PATHS)
def test_a_request_beside_a_waiting_one_aborts_and_is_not_kept(
    tmp_path: Path, spools: _Spools, fast: bool, extra: dict[str, Any]
) -> None:
    assoc = _acceptor(tmp_path, fast)
    _feed(assoc, _store(1, **extra))  # the association thread has not taken it yet
    _feed(assoc, _store(2, **extra))
    assert [p.MessageID for p in _waiting(assoc)] == [1]  # the second is not kept
    assert dul_events(assoc) == ["Evt19"]  # A-ABORT
    assert spools.open() == 1  # only the waiting one's spool: the refused one's closed
    assert isinstance(_waiting(assoc)[0].DataSet, ReceivingDataSet)


def test_the_refused_requests_data_set_is_not_received(tmp_path: Path, spools: _Spools) -> None:
    """On MIMIC's path the refusal comes with the command, before the data set: nothing
    of it is spooled, and its fragments are dropped as they come."""
    assoc = _acceptor(tmp_path, fast=True)
    _feed(assoc, _store(1))
    second = _store(2, max_pdu=4096)
    _feed(assoc, second[:1])  # its command
    assert dul_events(assoc) == ["Evt19"]
    _feed(assoc, second[1:])  # its data set, as the peer goes on until the abort
    assert len(spools.opened) == 1
    assert dul_events(assoc) == []  # one abort
    assert [p.MessageID for p in _waiting(assoc)] == [1]


def test_requests_one_after_another_are_each_kept(tmp_path: Path, spools: _Spools) -> None:
    """A peer that waits for each response: the association thread took each request
    before the next came (one being handled, one waiting beside it is also allowed)."""
    assoc = _acceptor(tmp_path, fast=True)
    handled = []
    for message_id in range(1, 5):
        _feed(assoc, _store(message_id))
        handled.append(assoc.dimse.msg_queue.get_nowait()[1].MessageID)
    _feed(assoc, _store(5))  # waits while 4 is handled
    assert handled == [1, 2, 3, 4]
    assert [p.MessageID for p in _waiting(assoc)] == [5]
    assert dul_events(assoc) == []


def test_responses_and_an_echo_are_not_a_second_request(tmp_path: Path, spools: _Spools) -> None:
    """A C-GET's sub-operations are answered while its request is handled: responses
    queue freely. A C-ECHO-RQ beside a waiting request is a second request."""
    assoc = _acceptor(tmp_path, fast=True)
    _feed(assoc, _store(1))
    _feed(assoc, _store_response(7))
    _feed(assoc, _store_response(8))
    assert dul_events(assoc) == []
    assert len(_waiting(assoc)) == 3
    _feed(assoc, _echo(2))
    assert dul_events(assoc) == ["Evt19"]
    assert len(_waiting(assoc)) == 3


def test_requests_queued_when_the_connection_ends_release_their_spools(
    tmp_path: Path, spools: _Spools
) -> None:
    assoc = _acceptor(tmp_path, fast=True)
    _feed(assoc, _store(1))
    partial = _store(2, max_pdu=4096)
    assoc.dimse.msg_queue.get_nowait()  # 1 is being handled (its handler releases its own)
    _feed(assoc, _store(3))  # waiting
    assoc.dimse.msg_queue.get_nowait()
    _feed(assoc, _store(4))  # waiting, and then 2 arrives in part: the connection ends
    _feed(assoc, partial[:3])
    assert dul_events(assoc) == ["Evt19"]
    assert spools.open() == 3  # 1 and 3, handed to the handler; 4 waiting
    discard_partial(SimpleNamespace(assoc=assoc))
    assert assoc.dimse.msg_queue.empty()
    assert spools.open() == 2  # 4's released; 1's and 3's are their handlers' to release


def test_the_connections_end_leaves_the_wake_up_of_a_waiting_service(tmp_path: Path) -> None:
    """pynetdicom queues (None, None) as the connection closes, to wake a service waiting
    for a response (a C-GET's sub-operation): the drain of unanswered requests leaves it,
    or the C-GET would wait its DIMSE timeout."""
    import threading
    import time

    from pynetdicom import evt
    from pynetdicom.fsm import AA_4
    from pynetdicom.transport import AddressInformation

    assoc = _acceptor(tmp_path, fast=True)
    assoc.bind(evt.EVT_CONN_CLOSE, discard_partial)  # as app.py binds it
    assoc.requestor.address_info = AddressInformation("127.0.0.1", 104)
    assoc.dimse_timeout = 30.0
    got: list[Any] = []

    def c_get_sub_operation() -> None:  # send_c_store waiting for the C-STORE-RSP
        got.append(assoc.dimse.get_msg(block=True))

    waiter = threading.Thread(target=c_get_sub_operation, daemon=True)
    waiter.start()
    time.sleep(0.2)
    AA_4(assoc.dul)  # the peer's connection closed: pynetdicom's own action
    waiter.join(10)
    assert got == [(None, None)]
