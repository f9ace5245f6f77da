"""A rejecting handler returns only once its A-ASSOCIATE-RJ is on the wire: the association
thread stops the DUL thread when the handler returns, and a DUL thread stopped before it
sent the RJ would close the connection without it (the peer would see an abort, not the
rejection). On a busy machine the DUL thread may take more than a second to get there."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest

from mimic_server.dimse import association


def _slow_association(delay: float) -> SimpleNamespace:
    """An association whose DUL thread reaches Sta13 (the RJ sent) after ``delay`` s."""
    machine = SimpleNamespace(current_state="Sta3")
    threading.Timer(delay, setattr, (machine, "current_state", "Sta13")).start()
    return SimpleNamespace(dul=SimpleNamespace(state_machine=machine, is_alive=lambda: True))


def test_the_handler_waits_for_a_dul_thread_slower_than_a_second() -> None:
    assoc = _slow_association(1.5)
    association._wait_until_sent(assoc)  # type: ignore[arg-type]
    assert assoc.dul.state_machine.current_state == "Sta13"


def test_a_dul_thread_that_never_sends_is_given_up_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    machine = SimpleNamespace(current_state="Sta3")
    assoc = SimpleNamespace(dul=SimpleNamespace(state_machine=machine, is_alive=lambda: True))
    with caplog.at_level(logging.WARNING, logger=association.__name__):
        started = time.monotonic()
        association._wait_until_sent(assoc, limit=0.2)  # type: ignore[arg-type]
    assert time.monotonic() - started >= 0.2
    assert any("A-ASSOCIATE-RJ was not sent" in r.getMessage() for r in caplog.records)


def test_a_dul_thread_that_ended_is_not_waited_for() -> None:
    """A DUL thread that ended (an error, the server stopping) will send nothing: the
    handler returns at once instead of holding the association thread for the limit."""
    machine = SimpleNamespace(current_state="Sta3")
    assoc = SimpleNamespace(dul=SimpleNamespace(state_machine=machine, is_alive=lambda: False))
    started = time.monotonic()
    association._wait_until_sent(assoc, limit=5.0)  # type: ignore[arg-type]
    assert time.monotonic() - started < 5.0
