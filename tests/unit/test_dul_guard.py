"""An exception out of an action of the DUL's state machine (``net/reactor.py``): pynetdicom
catches nothing there, and its DUL thread died with a traceback on stderr while the peer
saw its connection dropped without an A-ABORT. Now one ERROR record naming the exception's
type and where it was raised (never its message), an A-ABORT to the peer, the association
killed, the connection closed as pynetdicom's AA-2 closes it. A primitive the association
thread queued before this side's own abort is dropped, not taken for a bug."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pynetdicom import evt
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AddressInformation

from tests.support import wait_for
from tests.unit.test_pdu_read import _accepted_dul, _pdata


def test_an_action_that_raises_aborts_the_association(caplog: pytest.LogCaptureFixture) -> None:
    with _accepted_dul() as (dul, peer):
        closed: list[Any] = []
        dul.assoc.bind(evt.EVT_CONN_CLOSE, closed.append)
        state_machine = dul.state_machine
        state_machine.current_state = "Sta6"  # established
        secret = "1.2.840.99999.SECRET"

        def action(event: str) -> Any:
            raise ValueError(f"a value quoted: {secret}")

        state_machine.do_action = action
        peer.settimeout(10)
        with caplog.at_level(logging.ERROR, logger="mimic_server.net.reactor"):
            dul.start()
            peer.sendall(_pdata(b"\x01\x03" + bytes(8)))
            answer = peer.recv(10)
            dul.join(10)
        assert not dul.is_alive()
    assert answer == bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0])  # A-ABORT, source 2
    assert dul.assoc.is_aborted and not dul.assoc.is_established
    assert len(closed) == 1 and dul.socket.socket is None  # EVT_CONN_CLOSE: spool, slot
    [record] = [r for r in caplog.records if r.name == "mimic_server.net.reactor"]
    assert record.levelno == logging.ERROR and record.error == "ValueError"  # type: ignore[attr-defined]
    assert any("test_dul_guard" in frame for frame in record.where)  # type: ignore[attr-defined]
    assert secret not in caplog.text


def test_a_primitive_queued_before_our_own_abort_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After this side's A-ABORT (Sta13: a PDU it could not decode, say), a C-FIND response
    the association thread had queued is an event invalid in that state: dropped, no
    ERROR, no second A-ABORT; the connection closed as pynetdicom closes it in Sta13
    (review)."""
    with _accepted_dul() as (dul, peer):
        dul.assoc.requestor.address_info = AddressInformation("127.0.0.1", 11112)
        dul.state_machine.current_state = "Sta13"
        late = P_DATA()
        late.presentation_data_value_list.append((1, b"\x02" + bytes(8)))
        dul.to_provider_queue.put(late)
        peer.settimeout(0.5)
        with caplog.at_level(logging.DEBUG, logger="mimic_server.net.reactor"):
            dul.start()
            assert wait_for(lambda: dul.to_provider_queue.empty(), timeout=10)
            assert peer.recv(10) == b""  # no A-ABORT again: closed, as in Sta13
            dul.kill_dul()
            dul.join(10)
    assert [r.levelno for r in caplog.records if r.name == "mimic_server.net.reactor"] == [
        logging.DEBUG]
