"""Admission's test for a request whose requestor has left before its answer
(``dimse/association._withdrawn``). pynetdicom hands the A-ASSOCIATE-RQ to the association
thread from AE-6 and only then moves its state machine to Sta3: a request taken up at once
still shows Sta2, and "anything but Sta3 is withdrawn" aborted it (seen in a full suite
under load: storescu "Peer aborted Association", the log "association request withdrawn")."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mimic_server.dimse.association import _withdrawn


def _association(state: str) -> SimpleNamespace:
    return SimpleNamespace(is_aborted=False,
                           dul=SimpleNamespace(state_machine=SimpleNamespace(current_state=state)))


@pytest.mark.parametrize("state", ["Sta2", "Sta3"])
def test_a_request_not_yet_in_sta3_or_waiting_there_is_answered(state: str) -> None:
    assoc = _association(state)
    assert not _withdrawn(assoc, "127.0.0.1:1", "modality1", "CT1")  # type: ignore[arg-type]
    assert not assoc.is_aborted


@pytest.mark.parametrize("state", ["Sta1", "Sta13"])  # A-ABORT or closed; A-RELEASE-RQ
def test_a_requestor_gone_is_not_answered(state: str) -> None:
    assoc = _association(state)
    assert _withdrawn(assoc, "127.0.0.1:1", "modality1", "CT1")  # type: ignore[arg-type]
    assert assoc.is_aborted
