"""The Query record of a C-FIND (``dimse/audited.py``) carries the C-FIND's final status and
its outcome, driven as pynetdicom drives a handler: items are asked for until a final
status, then the generator is dropped (closed), which is no cancel."""

from __future__ import annotations

import io
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from mimic_server.dimse.audited import audited_find, outcome_of
from mimic_server.dimse.find import failure
from mimic_server.errors import Status
from mimic_server.security import audit


class _Trail:
    def __init__(self) -> None:
        self.records: list[tuple[tuple[str, str, str], int, dict[str, Any]]] = []

    def record(self, event: tuple[str, str, str], outcome: int, **details: Any) -> None:
        self.records.append((event, outcome, details))


def _event() -> Any:
    request = SimpleNamespace(Identifier=io.BytesIO(b"\x08\x00\x52\x00"),
                              AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1")
    return SimpleNamespace(request=request,
                           context=SimpleNamespace(transfer_syntax="1.2.840.10008.1.2"),
                           assoc=SimpleNamespace(acceptor=SimpleNamespace(ae_title="MIMIC")))


def _as_pynetdicom(items: list[Any]) -> tuple[int, dict[str, Any]]:
    """Run a handler yielding ``items`` through the wrapper as pynetdicom's C-FIND service
    does: it stops at the first status that is not Pending and drops the generator."""
    trail = _Trail()

    def handler(event: Any) -> Iterator[Any]:
        yield from items

    answers = audited_find(handler, trail)(_event())  # type: ignore[arg-type]
    for status, _ in answers:
        value = status if isinstance(status, int) else status.Status
        if value not in (0xFF00, 0xFF01):
            break
    answers.close()  # what the garbage collector does to the dropped generator
    [(event, outcome, details)] = trail.records
    assert event == audit.QUERY
    return outcome, details


@pytest.mark.parametrize("status", [Status.NOT_AUTHORIZED, 0xA900, 0xC000])
def test_a_refused_find_is_recorded_as_refused_not_as_a_cancel(status: int) -> None:
    """Was 0xFE00, outcome 8: pynetdicom's dropping of the generator taken for a cancel."""
    outcome, details = _as_pynetdicom([(failure(status, "refused"), None)])
    assert details["status"] == f"0x{status:04X}"
    assert outcome == audit.MINOR_FAILURE


def test_the_limit_reached_is_out_of_resources() -> None:
    outcome, details = _as_pynetdicom([(Status.PENDING, object()),
                                       (failure(Status.OUT_OF_RESOURCES, "refine"), None)])
    assert (details["status"], outcome) == ("0xA700", audit.SERIOUS_FAILURE)


def test_matches_then_success_record_success() -> None:
    """Was 0xFF00: the last Pending, not the Success pynetdicom answers after it."""
    outcome, details = _as_pynetdicom([(Status.PENDING, object()), (Status.PENDING, object())])
    assert (details["status"], outcome) == ("0x0000", audit.SUCCESS)


def test_a_cancel_is_a_minor_failure() -> None:
    """Conformance section 6: outcome 4 for refused or cancelled (0xFE00 was 8)."""
    outcome, details = _as_pynetdicom([(Status.PENDING, object()), (Status.CANCEL, None)])
    assert (details["status"], outcome) == ("0xFE00", audit.MINOR_FAILURE)
    assert outcome_of(Status.CANCEL) == audit.MINOR_FAILURE


def test_an_association_gone_mid_answer_is_a_cancel() -> None:
    trail = _Trail()

    def handler(event: Any) -> Iterator[Any]:
        yield Status.PENDING, object()
        yield Status.PENDING, object()

    answers = audited_find(handler, trail)(_event())  # type: ignore[arg-type]
    next(answers)
    answers.close()  # dropped after the first match: the requestor went away
    [(_, outcome, details)] = trail.records
    assert (details["status"], outcome) == ("0xFE00", audit.MINOR_FAILURE)


def test_a_final_status_is_recorded_when_handed_over_not_at_close() -> None:
    """pynetdicom drops the generator after a final status without closing it: a reference
    cycle through it held the record back until the garbage collector ran (seen as a
    refused request's record missing in a full suite). Written as the status goes out,
    once."""
    trail = _Trail()

    def handler(event: Any) -> Iterator[Any]:
        yield failure(0xA900, "refused"), None

    answers = audited_find(handler, trail)(_event())  # type: ignore[arg-type]
    next(answers)
    assert [details["status"] for _, _, details in trail.records] == ["0xA900"]
    answers.close()
    assert len(trail.records) == 1
