"""A requestor association keeps its responses (``mimic_server/net/requestor.py``).

pynetdicom's race (issue 875) needs the association thread to lose the CPU at one exact
moment; here that moment is made to happen every time. The association thread is held right
after it has passed its checkpoint (still reading as paused) until the request has been sent
and its response queued, and the sender's own wait for the response is held until the
association thread has had its look at the queue. Without the guard that look takes the
response and the sender gets none; with it the sender gets its response.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from mimic_server.net.requestor import _GuardedDIMSE, keep_responses
from tests.support import HOST

WAIT = 5.0


@pytest.fixture()
def echo_scp() -> Iterator[int]:
    ae = AE(ae_title="ECHOSCP")
    ae.add_supported_context(Verification)
    server = ae.start_server((HOST, 0), block=False)
    yield server.server_address[1]
    server.shutdown()


def _associate(port: int, monkeypatch: pytest.MonkeyPatch) -> Association:
    """A requestor association, unguarded (the suite guards every one it opens)."""
    monkeypatch.setattr(Association, "start", threading.Thread.start)
    ae = AE(ae_title="SCU")
    ae.dimse_timeout = 2
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, port, ae_title="ECHOSCP")
    assert assoc.is_established
    return assoc


class _Race:
    """Makes the association thread lose the CPU at the race's moment, once."""

    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc
        self.armed = threading.Event()
        self.held = threading.Event()  # the association thread is held past its checkpoint
        self.sent = threading.Event()
        self.queued = threading.Event()
        self.looked = threading.Event()  # its first look at the queue after the response
        checkpoint = assoc._reactor_checkpoint
        wait, dimse = checkpoint.wait, assoc.dimse
        get_msg, send_msg, put = dimse.get_msg, dimse.send_msg, dimse.msg_queue.put

        def held_wait(timeout: float | None = None) -> bool:
            passed = wait(timeout)
            if threading.current_thread() is assoc and self.armed.is_set():
                self.armed.clear()
                self.held.set()  # _is_paused is still True here
                self.sent.wait(WAIT)
                self.queued.wait(WAIT)
            return passed

        def looking_get_msg(block: bool = False) -> Any:
            if block:  # the sender: only once the association thread has looked
                self.looked.wait(WAIT)
                return get_msg(block=True)
            found = get_msg(block=False)
            if self.queued.is_set():
                self.looked.set()
            return found

        def sending(primitive: Any, context_id: int) -> None:
            send_msg(primitive, context_id)
            self.sent.set()

        def queuing(item: Any, *args: Any, **kwargs: Any) -> None:
            put(item, *args, **kwargs)
            self.queued.set()

        checkpoint.wait = held_wait  # type: ignore[method-assign]
        dimse.get_msg = looking_get_msg  # type: ignore[method-assign]
        dimse.send_msg = sending  # type: ignore[method-assign]
        dimse.msg_queue.put = queuing  # type: ignore[method-assign]

    def echo(self) -> Any:
        self.armed.set()
        assert self.held.wait(WAIT), "the association thread never reached its checkpoint"
        return self.assoc.send_c_echo()


def test_without_the_guard_the_association_thread_takes_the_response(
    echo_scp: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The race as pynetdicom has it: what the guard is for (and proof the test reaches it)."""
    assoc = _associate(echo_scp, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        status = _Race(assoc).echo()

    assert "Status" not in status  # no response within the DIMSE timeout
    assert assoc.is_aborted
    assert "Received unexpected C-ECHO service message" in caplog.text


def test_with_the_guard_the_sender_gets_its_response(
    echo_scp: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assoc = _associate(echo_scp, monkeypatch)
    keep_responses(assoc)
    race = _Race(assoc)
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        status = race.echo()
        assert status.Status == 0x0000
        assert race.looked.is_set()  # the association thread did look, and left it
        assert assoc.send_c_echo().Status == 0x0000  # and it keeps serving turns after
    assoc.release()
    assert assoc.is_released
    assert "unexpected" not in caplog.text


def test_the_guard_is_applied_once_and_only_to_a_plain_provider(
    echo_scp: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    assoc = _associate(echo_scp, monkeypatch)
    keep_responses(assoc)
    checkpoint = assoc._reactor_checkpoint
    keep_responses(assoc)
    assert type(assoc.dimse) is _GuardedDIMSE
    assert assoc._reactor_checkpoint is checkpoint and checkpoint.is_set()
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_a_provider_of_another_class_is_left_alone() -> None:
    class Other(DIMSEServiceProvider):
        pass

    class Stub:
        dimse = object.__new__(Other)
        _reactor_checkpoint = threading.Event()

    stub = Stub()
    keep_responses(stub)
    assert type(stub.dimse) is Other
    assert type(stub._reactor_checkpoint) is threading.Event
