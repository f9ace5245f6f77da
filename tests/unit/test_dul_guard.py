"""An exception out of an action of the DUL's state machine (``net/reactor.py``): pynetdicom
catches nothing there, and its DUL thread died with a traceback on stderr while the peer
saw its connection dropped without an A-ABORT. Now one ERROR record naming the exception's
type and where it was raised (never its message), an A-ABORT to the peer, the association
killed."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.unit.test_pdu_read import _accepted_dul, _pdata


def test_an_action_that_raises_aborts_the_association(caplog: pytest.LogCaptureFixture) -> None:
    with _accepted_dul() as (dul, peer):
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
    [record] = [r for r in caplog.records if r.name == "mimic_server.net.reactor"]
    assert record.levelno == logging.ERROR and record.error == "ValueError"  # type: ignore[attr-defined]
    assert any("test_dul_guard" in frame for frame in record.where)  # type: ignore[attr-defined]
    assert secret not in caplog.text
